"""How many upload checks run at once, and whose: PROBE_CONCURRENCY slots shared fairly between
tenants, for uploads and live sources alike (service/probe.py runs the checks).

A free slot goes to the waiting tenant with the fewest checks running (first come among equals), so
one tenant's many uploads wait behind each other, never in front of another tenant's: a tenant
sending hundreds of costly images at once delays only itself.
"""

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

from service.errors import ApiError


class CheckSlots:
    """PROBE_CONCURRENCY slots for checks, granted fairly between tenants (API key owners; None
    where keys are off). Used from the event loop only."""

    def __init__(self, slots: int):
        self.free = slots
        self.running: Counter[str | None] = Counter()
        self.waiting: list[tuple[str | None, asyncio.Future]] = []

    @contextlib.asynccontextmanager
    async def slot(self, owner: str | None, timeout: float) -> AsyncIterator[None]:
        """A slot for `owner`, waited for in the event loop (not in a worker thread): 503
        server_busy when none comes free within `timeout`, as long as a check may take."""
        if self.free and not self.waiting:
            self._take(owner)
        else:
            await self._wait(owner, timeout)
        try:
            yield
        finally:
            self._give_back(owner)

    async def _wait(self, owner: str | None, timeout: float) -> None:
        granted = asyncio.get_running_loop().create_future()
        self.waiting.append((owner, granted))
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(granted)
        except BaseException as exc:
            if granted.done():  # granted as the wait ended: hand it on
                self._give_back(owner)
            else:
                granted.cancel()
                self.waiting.remove((owner, granted))
            if isinstance(exc, TimeoutError):
                message = "too many uploads are being checked; retry shortly"
                raise ApiError(503, "server_busy", message, {"Retry-After": "5"}) from None
            raise

    def _take(self, owner: str | None) -> None:
        self.free -= 1
        self.running[owner] += 1

    def _give_back(self, owner: str | None) -> None:
        self.free += 1
        self.running[owner] -= 1
        if not self.running[owner]:
            del self.running[owner]
        while self.free and self.waiting:
            index = min(range(len(self.waiting)), key=lambda i: (self.running[self.waiting[i][0]], i))
            next_owner, granted = self.waiting.pop(index)
            self._take(next_owner)
            granted.set_result(None)
