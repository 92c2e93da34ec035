"""The API's background duties besides serving requests: finding lost jobs, delivering webhooks and
(through `keep_going`, service/app.py) sweeping expired jobs.

They keep their state in Redis and the store, so any number of API processes may run them side by
side. An outage of either, or any failure, only pauses a duty: it is logged, the duty is tried again
after a back-off, and it goes on once the outage ends; none of them can fail the API's shutdown.
"""

import asyncio
import logging
from collections.abc import Callable

import redis
from starlette.concurrency import run_in_threadpool

from contract.job import TERMINAL
from contract.maintenance import LostJobHandler, recover_lost_jobs
from contract.storage import StorageError
from service.context import ServiceContext
from service.job_view import describe
from service.webhooks import Dispatcher, Webhook

FIRST_RETRY = 1.0  # seconds before a failed duty is tried again; doubled while it fails, up to its interval
log = logging.getLogger("service")


async def keep_going(name: str, interval: float, duty: Callable[[], object]) -> None:
    """Run the blocking `duty` in a thread every `interval` seconds until canceled; a failure is
    logged and the duty tried again after 1, 2, 4... seconds (at most `interval`)."""
    failures = 0
    while True:
        try:
            await run_in_threadpool(duty)
            failures = 0
        except (redis.exceptions.RedisError, StorageError) as exc:
            failures += 1
            log.warning("%s failed (%s: %s); trying again", name, type(exc).__name__, exc)
        except Exception:
            failures += 1
            log.exception("%s failed; trying again", name)
        await asyncio.sleep(min(interval, FIRST_RETRY * 2 ** (failures - 1)) if failures else interval)


def _webhook_view(ctx: ServiceContext, job_id: str) -> Webhook | None:
    """What a webhook delivers for `job_id`: the job resource, its URL, whether the job has ended."""
    record = ctx.queue.fetch(job_id)
    if record is None or not record.webhook_url:
        return None
    resource = describe(record)
    body = resource.model_dump_json().encode()
    return Webhook(body, record.webhook_url, resource.status in TERMINAL, record.owner or "")


def start(ctx: ServiceContext) -> list[asyncio.Task]:
    settings = ctx.settings
    handler = LostJobHandler(ctx.redis)
    lost_jobs = keep_going(
        "lost-job pass", settings.maintenance_interval, lambda: recover_lost_jobs(ctx.queue, handler)
    )
    tasks = [asyncio.create_task(lost_jobs)]
    if settings.webhook_key is not None:
        dispatcher = Dispatcher(ctx.redis, lambda job_id: _webhook_view(ctx, job_id), settings)
        tasks.append(asyncio.create_task(dispatcher.run()))
    return tasks


async def stop(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception:  # a duty that died of something unforeseen must not fail the shutdown
            log.exception("a background duty had failed")
