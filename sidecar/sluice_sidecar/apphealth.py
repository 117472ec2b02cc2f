"""Whether the app answers at all, as the deliveries and a probe find it.

An app that does not answer (refused, reset, not listening yet: it is starting, stopping
or crash-looping) is not an app that refused an event. While it does not answer, delivery
pauses without spending attempts and a probe asks every ``interval`` until it answers;
the member gives its partitions up after ``grace`` so another member delivers them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("sluice_sidecar")


class AppHealth:
    def __init__(
        self, probe: Callable[[], Awaitable[bool]], interval: float, on_change: Callable[[], None]
    ) -> None:
        self._probe = probe
        self.interval = interval
        self._on_change = on_change  # called when the app goes down or comes back
        self._up = asyncio.Event()
        self.reason = "not probed yet"
        self.down_since = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self._up.is_set()

    def start(self) -> None:
        """Probe until the app answers (the sidecar starts before its app)."""
        self._task = asyncio.create_task(self._probing(first_wait=False), name="app-probe")

    async def wait_up(self) -> None:
        await self._up.wait()

    def down(self, reason: str) -> None:
        """A delivery found nobody answering: pause delivery and probe until it answers."""
        if not self.up:
            return
        self._up.clear()
        self.reason = reason
        self.down_since = time.monotonic()
        log.warning("the app is not answering (%s): delivery paused, no attempts spent; probing", reason)
        self._on_change()
        self._task = asyncio.create_task(self._probing(first_wait=True), name="app-probe")

    def down_for(self) -> float:
        return 0.0 if self.up else time.monotonic() - self.down_since

    async def _probing(self, first_wait: bool) -> None:
        if first_wait:  # it just failed: a probe at once would mostly say the same
            await asyncio.sleep(self.interval)
        while not await self._probe():  # noqa: ASYNC110 (an app's health can only be polled)
            await asyncio.sleep(self.interval)
        log.info("the app answers%s: delivering", " again" if self.reason != "not probed yet" else "")
        self.reason = ""
        self._up.set()
        self._on_change()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
