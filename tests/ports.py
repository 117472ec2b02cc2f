"""Addresses for processes under test, never guessed.

Two ways, and no third:

- A process that is started once binds port 0 and prints the address it got; the test
  reads it from that line (``announced``).
- A process whose address must be known before it starts (a store that is killed and
  started again on the same address, an app a sidecar is told about first) gets a
  *reserved* port: this process binds a socket to a free port with ``SO_REUSEADDR`` and
  keeps it bound, never listening, for the rest of the run. While it is bound the kernel
  gives that port to no other bind or outgoing connection on the machine, so no two
  reservations, in this run or a parallel one, can be the same port; the process under
  test can still listen on it, since every server here sets ``SO_REUSEADDR`` (grpc,
  aiohttp, http.server) and Linux lets it bind beside a socket that does not listen.
"""

from __future__ import annotations

import asyncio
import re
import socket

_held: list[socket.socket] = []


def reserve_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing else will be given while this test run lasts."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    _held.append(s)
    port: int = s.getsockname()[1]
    return port


async def announced(
    stream: asyncio.StreamReader, pattern: str, seen: bytearray | None = None
) -> re.Match[str]:
    """Read lines until one matches ``pattern`` (the process's "listening on" line).

    Lines before it are kept in ``seen``; end of output raises ``RuntimeError`` with them.
    """
    rx = re.compile(pattern)
    while True:
        line = await stream.readline()
        if not line:
            raise RuntimeError(f"exited before printing /{pattern}/: {bytes(seen or b'').decode()[-3000:]}")
        if seen is not None:
            seen += line
        if m := rx.search(line.decode(errors="replace")):
            return m
