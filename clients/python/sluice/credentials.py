"""How a client proves who it is and checks whom it talks to: TLS (a CA to trust, a client
certificate for mutual TLS) and a bearer token (given, or a file read again when it
changes, as a Kubernetes projected service-account token is rotated)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import grpc


@dataclasses.dataclass(frozen=True)
class Credentials:
    tls: bool = False  # TLS with the system's roots, or with ``ca_file``
    ca_file: str = ""
    cert_file: str = ""  # mutual TLS: this client's certificate and key
    key_file: str = ""
    token: str = ""  # a bearer token (a static API token or a JWT)
    token_file: str = ""  # ... or a file holding it, read again when it changes
    server_name: str = ""  # the name to check the server's certificate against, if not the target's

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Credentials | None:
        """From SLUICE_TLS_CA, SLUICE_TLS_CERT, SLUICE_TLS_KEY, SLUICE_TLS (true: system
        roots), SLUICE_TOKEN and SLUICE_TOKEN_FILE; None when none is set."""
        env = os.environ if env is None else env
        made = cls(
            tls=env.get("SLUICE_TLS", "").lower() in ("1", "true", "yes"),
            ca_file=env.get("SLUICE_TLS_CA", ""),
            cert_file=env.get("SLUICE_TLS_CERT", ""),
            key_file=env.get("SLUICE_TLS_KEY", ""),
            token=env.get("SLUICE_TOKEN", ""),
            token_file=env.get("SLUICE_TOKEN_FILE", ""),
        )
        return made if made != cls() else None

    @property
    def secure(self) -> bool:
        return self.tls or bool(self.ca_file or self.cert_file)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))

    def channel_options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    def token_source(self) -> Callable[[], str] | None:
        if self.token:
            token = self.token
            return lambda: token
        if self.token_file:
            return _FileToken(self.token_file)
        return None


class _FileToken:
    """A token file's content, read again when the file changes (checked once a second)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._value = ""
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0

    def __call__(self) -> str:
        now = time.monotonic()
        if now - self._checked >= 1.0 or not self._value:
            self._checked = now
            st = os.stat(self.path)
            stamp = (st.st_mtime, st.st_size)
            if stamp != self._stamp:
                self._value = Path(self.path).read_text().strip()
                self._stamp = stamp
        return self._value


class _Bearer:
    def __init__(self, token: Callable[[], str]) -> None:
        self.token = token

    def _details(self, d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(d.metadata or ()))
        if "authorization" in metadata:
            return d  # a credential passed on for someone else (the gateway's callers) stays
        metadata.add("authorization", f"Bearer {self.token()}")
        return grpc.aio.ClientCallDetails(d.method, d.timeout, metadata, d.credentials, d.wait_for_ready)


# One class per kind of call: a channel files each interceptor under the first kind it is.
# (grpc's type stubs leave the aio interceptor bases untyped.)
class _UnaryUnary(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStream(_Bearer, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnary(_Bearer, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _StreamStream(_Bearer, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def bearer_interceptors(token: Callable[[], str]) -> list[Any]:
    """Interceptors that add ``authorization: Bearer <token>`` to every call."""
    return [kind(token) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]
