"""The API's shutdown waits for cancelled uploads to remove their files (a CI failure once)."""

import asyncio
import threading

from service.open_uploads import OpenUploads


def test_shutdown_waits_for_a_cancelled_upload_to_finish_its_cleanup():
    uploads = OpenUploads()
    removed = threading.Event()

    async def upload(started: asyncio.Event) -> None:
        with uploads.open("job"):
            try:
                started.set()
                await asyncio.sleep(60)  # a stalled client
            except asyncio.CancelledError:
                await asyncio.to_thread(lambda: (threading.Event().wait(0.3), removed.set()))
                raise

    async def scenario() -> tuple[set[str], bool]:
        started = asyncio.Event()
        task = asyncio.create_task(upload(started))
        await started.wait()
        task.cancel()  # as uvicorn does after SHUTDOWN_TIMEOUT_SECONDS, not waiting for the task
        left = await uploads.drained(5.0)
        return left, removed.is_set()

    assert asyncio.run(scenario()) == (set(), True)


def test_an_upload_that_never_ends_does_not_hold_the_shutdown():
    uploads = OpenUploads()

    async def scenario() -> set[str]:
        with uploads.open("stuck"):
            return await uploads.drained(0.1)

    assert asyncio.run(scenario()) == {"stuck"}
