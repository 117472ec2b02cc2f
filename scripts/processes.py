"""Child processes for `make run` and `make demo`: started in order, stopped in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence


class Processes:
    """Components of the mesh, each its own process, as a deployment runs them."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, asyncio.subprocess.Process]] = []
        self._drains: list[asyncio.Task[bytes]] = []

    async def start(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        ready: Callable[[], Awaitable[bool]] | None = None,
        quiet: bool = False,
        announce: str = "",
    ) -> re.Match[str] | None:
        """Start a component; with ``announce``, wait for the line of its output that
        matches it (the addresses it bound) and return the match; with ``ready``, wait
        until it says it is ready. Each wait is bounded (30 s)."""
        out = asyncio.subprocess.DEVNULL if quiet else None
        proc = await asyncio.create_subprocess_exec(
            *args, env=env, stdout=asyncio.subprocess.PIPE if announce else out, stderr=out
        )
        self.procs.append((name, proc))
        found = None
        async with asyncio.timeout(30):
            if announce:
                assert proc.stdout is not None
                while not (found := re.search(announce, (line := await proc.stdout.readline()).decode())):
                    if not line:
                        raise RuntimeError(f"{name} exited at start (code {await proc.wait()})")
                self._drains.append(asyncio.create_task(proc.stdout.read()))  # the rest, unread
        if ready is not None:
            await self.ready(name, ready)
        return found

    async def ready(self, name: str, check: Callable[[], Awaitable[bool]]) -> None:
        """Wait (up to 30 s) until ``check()`` says the component is ready."""
        proc = dict(self.procs)[name]
        async with asyncio.timeout(30):
            while not await check():
                if proc.returncode is not None:
                    raise RuntimeError(f"{name} exited at start (code {proc.returncode})")
                await asyncio.sleep(0.1)

    async def first_exit(self, stop: asyncio.Event) -> None:
        """Wait until stop is set or a component exits."""
        waits = [asyncio.create_task(p.wait()) for _, p in self.procs]
        halt = asyncio.create_task(stop.wait())
        await asyncio.wait([halt, *waits], return_when=asyncio.FIRST_COMPLETED)
        for task in (halt, *waits):
            task.cancel()

    async def stop(self) -> list[int]:
        """SIGTERM each in reverse order of start (each drains); their exit codes."""
        for _, p in reversed(self.procs):
            if p.returncode is None:
                p.terminate()
                await p.wait()
        return [p.returncode or 0 for _, p in self.procs]

    def exited(self) -> list[str]:
        return [name for name, p in self.procs if p.returncode not in (None, 0, -signal.SIGTERM)]


@contextlib.asynccontextmanager
async def until_interrupted() -> AsyncIterator[asyncio.Event]:
    """An event set by Ctrl-C or SIGTERM to this process."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
