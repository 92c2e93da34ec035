"""What the routes work with: the settings, the Redis-backed queue and the job storage."""

from dataclasses import dataclass

from fastapi import Request
from redis import Redis

from service.auth import parse_keys
from service.queue import JobQueue, connect
from service.settings import Settings
from service.storage import JobStore


@dataclass(frozen=True)
class ServiceContext:
    settings: Settings
    redis: Redis
    queue: JobQueue
    store: JobStore
    api_keys: dict[str, bytes]  # owner -> SHA-256 of the key; empty: keys are off

    @classmethod
    def from_settings(cls, settings: Settings) -> "ServiceContext":
        redis = connect(settings.queue_url)
        return cls(
            settings=settings,
            redis=redis,
            queue=JobQueue(redis, settings.job_timeout, settings.result_ttl, settings.job_retries),
            store=JobStore(settings.data_dir),
            api_keys=parse_keys(settings.api_keys),
        )


def get_context(request: Request) -> ServiceContext:
    return request.app.state.context
