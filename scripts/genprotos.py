"""Generate Python messages, stubs and type stubs for protos/ into the given directory."""

from __future__ import annotations

import os
import pathlib
import sys

import google.rpc
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main(out: str) -> None:
    # protoc finds the mypy-protobuf plugins on PATH, next to this interpreter.
    bindir = str(pathlib.Path(sys.executable).parent)
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    out_dir = pathlib.Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    googleapis = pathlib.Path(google.rpc.__path__[0]).parent.parent
    wkt = pathlib.Path(protoc.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto"))
    args = [
        "protoc",
        f"--proto_path={ROOT / 'protos'}",
        f"--proto_path={googleapis}",
        f"--proto_path={wkt}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")


if __name__ == "__main__":
    main(sys.argv[1])
