"""The Go client (clients/go), built from Debian's Go packages in GOPATH mode with stubs
generated from protos/, and its suite run against a real store."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import StoreProcess

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc")


def googleapis() -> Path:
    """Where google/rpc/status.proto is (the googleapis-common-protos package)."""
    from google.rpc import status_pb2

    return Path(status_pb2.__file__).resolve().parents[2]


async def run(*args: str, env: dict[str, str], cwd: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, f"{' '.join(args)}\n{out.decode()[-4000:]}"
    return out.decode()


@pytest.mark.beside
@pytest.mark.timeout(600)  # compiling gRPC and the stubs is most of it, slower on a busy machine
async def test_the_go_client_suite_against_a_real_store(
    spawn: Callable[..., StoreProcess], tmp_path: Path
) -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        why = f"{missing} not installed (make test installs them as root: scripts/system-packages.sh)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    gopath = tmp_path / "gopath"
    module = gopath / "src/sluice.dev/sluice"
    module.mkdir(parents=True)
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}:/usr/share/gocode",
        "GOCACHE": str(tmp_path / "gocache"),
    }
    protos = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto"))
    await run(
        "protoc", "-I", str(ROOT / "protos"), "-I", str(googleapis()), "-I", "/usr/include",
        f"--go_out={gopath / 'src'}", f"--go-grpc_out={gopath / 'src'}", *protos,
        env=env, cwd=ROOT,
    )  # fmt: skip
    for source in (ROOT / "clients/go/sluice").glob("*.go"):
        shutil.copy(source, module / source.name)
    store = spawn()
    await store.start()
    out = await run(
        "go", "test", "-count=1", "-v", "sluice.dev/sluice",
        env={**env, "SLUICE_STORE_ADDR": store.addr}, cwd=module,
    )  # fmt: skip
    assert out.count("--- PASS") == 5 and "--- FAIL" not in out, out
