"""The uploads whose request has not ended, so that the API's shutdown can wait for their files.

On SIGTERM uvicorn cancels the requests that outlive SHUTDOWN_TIMEOUT_SECONDS and goes straight on
to the lifespan's end. A cancelled upload still has its files to remove (in a worker thread), and
the process must not exit before it has: the lifespan waits for `drained` first.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

DRAIN_SECONDS = 5.0  # a cancelled upload removes a folder of its own: this is ample
log = logging.getLogger("service")


class OpenUploads:
    def __init__(self) -> None:
        self._job_ids: set[str] = set()

    @contextlib.contextmanager
    def open(self, job_id: str) -> Iterator[None]:
        """Count `job_id` as open until its request has accepted it or removed its files."""
        self._job_ids.add(job_id)
        try:
            yield
        finally:
            self._job_ids.discard(job_id)

    async def drained(self, seconds: float = DRAIN_SECONDS) -> set[str]:
        """Wait until no upload is open, at most `seconds`; returns the ids of those still open."""
        deadline = time.monotonic() + seconds
        while self._job_ids and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self._job_ids:
            log.warning("%d uploads open at shutdown: the sweep removes their files", len(self._job_ids))
        return set(self._job_ids)
