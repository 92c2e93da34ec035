"""The API's background duties besides serving requests: finding lost jobs and delivering webhooks.

Both keep their state in Redis, so any number of API processes may run them side by side, and a
Redis outage only pauses them.
"""

import asyncio
import contextlib
import logging

import redis
from starlette.concurrency import run_in_threadpool

from contract.job import TERMINAL
from contract.maintenance import LostJobHandler, recover_lost_jobs
from service.context import ServiceContext
from service.jobs import describe
from service.webhooks import Dispatcher, Webhook

log = logging.getLogger("service")


async def _find_lost_jobs(ctx: ServiceContext) -> None:
    handler = LostJobHandler(ctx.redis)
    while True:
        try:
            await run_in_threadpool(recover_lost_jobs, ctx.queue, handler)
        except redis.exceptions.RedisError as exc:
            log.warning("lost-job pass skipped: %s", exc)
        await asyncio.sleep(ctx.settings.maintenance_interval)


def _webhook_view(ctx: ServiceContext, job_id: str) -> Webhook | None:
    """What a webhook delivers for `job_id`: the job resource, its URL, whether the job has ended."""
    record = ctx.queue.fetch(job_id)
    if record is None or not record.webhook_url:
        return None
    resource = describe(record)
    body = resource.model_dump_json().encode()
    return Webhook(body, record.webhook_url, resource.status in TERMINAL, record.owner or "")


def start(ctx: ServiceContext) -> list[asyncio.Task]:
    tasks = [asyncio.create_task(_find_lost_jobs(ctx))]
    settings = ctx.settings
    if settings.webhook_key is not None:
        dispatcher = Dispatcher(ctx.redis, lambda job_id: _webhook_view(ctx, job_id), settings)
        tasks.append(asyncio.create_task(dispatcher.run()))
    return tasks


async def stop(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
