"""The Java client (clients/java), compiled with Debian's gRPC Java packages against stubs
generated from protos/ (and google/rpc), and its suite run against a real store."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.clients.test_go import googleapis, run
from tests.conftest import StoreProcess

ROOT = Path(__file__).resolve().parents[2]
JARS = Path("/usr/share/java")
#: What the client needs at compile and run time (netty as its separate jars, not netty-all).
CLASSPATH = [
    *(f"grpc-{m}.jar" for m in ("api", "core", "context", "netty", "protobuf", "protobuf-lite", "stub")),
    "protobuf.jar", "guava.jar", "perfmark-api.jar", "gson.jar", "error_prone_annotations.jar",
    "geronimo-annotation-1.3-spec.jar", "jsr305.jar",
    *(f"netty-{m}.jar" for m in (
        "buffer", "codec", "codec-http", "codec-http2", "common", "handler", "resolver", "transport",
        "codec-socks", "handler-proxy",
    )),
]  # fmt: skip


@pytest.mark.beside
@pytest.mark.timeout(600)  # compiling gRPC and the stubs is most of it, slower on a busy machine
async def test_the_java_client_suite_against_a_real_store(
    spawn: Callable[..., StoreProcess], tmp_path: Path
) -> None:
    tools = ["javac", "java", "protoc", "grpc_java_plugin"]
    missing = [t for t in tools if shutil.which(t) is None] + [
        j for j in CLASSPATH if not (JARS / j).exists()
    ]
    if missing:
        why = f"{missing} not installed (make test installs them as root: scripts/system-packages.sh)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    gen, classes = tmp_path / "gen", tmp_path / "classes"
    gen.mkdir()
    protos = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto"))
    env = dict(os.environ)
    await run(
        "protoc", "-I", str(ROOT / "protos"), "-I", str(googleapis()), "-I", "/usr/include",
        f"--java_out={gen}", f"--grpc-java_out={gen}",
        f"--plugin=protoc-gen-grpc-java={shutil.which('grpc_java_plugin')}",
        *protos, "google/rpc/status.proto", "google/rpc/error_details.proto",
        env=env, cwd=ROOT,
    )  # fmt: skip
    classpath = ":".join(str(JARS / j) for j in CLASSPATH)
    sources = [
        str(p)
        for d in (gen, ROOT / "clients/java/src", ROOT / "clients/java/test")
        for p in d.rglob("*.java")
    ]
    await run("javac", "-nowarn", "-d", str(classes), "-cp", classpath, *sources, env=env, cwd=ROOT)
    store = spawn()
    await store.start()
    out = await run(
        "java", "-cp", f"{classes}:{classpath}", "io.sluice.client.SluiceClientTest",
        env={**env, "SLUICE_STORE_ADDR": store.addr}, cwd=ROOT,
    )  # fmt: skip
    assert out.count("PASS ") == 5 and "passed 5 of 5" in out, out
