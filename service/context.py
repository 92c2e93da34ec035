"""What the routes work with: the settings, the Redis-backed queue and the job store."""

from dataclasses import dataclass, field

from fastapi import Request
from redis import Redis

from contract.queue import JobQueue, connect
from contract.settings import Settings
from contract.storage import JobStore, open_store
from service.auth import parse_keys
from service.check_slots import CheckSlots
from service.open_uploads import OpenUploads
from service.probe import Prober
from service.readiness import StoreReadiness


@dataclass(frozen=True)
class ServiceContext:
    settings: Settings
    redis: Redis
    queue: JobQueue
    store: JobStore
    store_check: StoreReadiness  # /readyz's check that the store can be written
    api_keys: dict[str, bytes]  # owner -> SHA-256 of the key; empty: keys are off
    prober: Prober  # reads uploaded videos in limited child processes
    upload_checks: CheckSlots  # uploads and live sources being checked at once, fairly between tenants
    open_uploads: OpenUploads = field(default_factory=OpenUploads)  # waited for on shutdown

    @classmethod
    def from_settings(cls, settings: Settings) -> "ServiceContext":
        redis = connect(settings.queue_url)
        store = open_store(settings)
        return cls(
            settings=settings,
            redis=redis,
            queue=JobQueue(redis, settings.job_timeout, settings.result_ttl, settings.job_retries),
            store=store,
            store_check=StoreReadiness(store),
            api_keys=parse_keys(settings.api_keys),
            prober=Prober(settings.probe_timeout_seconds, settings.probe_memory_mb),
            upload_checks=CheckSlots(settings.probe_concurrency),
        )


def get_context(request: Request) -> ServiceContext:
    return request.app.state.context
