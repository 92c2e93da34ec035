"""The periodic sweep that makes results expire after RESULT_TTL.

RQ drops its own record of a finished job after the same TTL, but the job's folder (inputs and MP4)
is ours to remove. A folder with no job record is kept while anything in it is recent, because that
is an upload still streaming in, and removed once it is older than ORPHAN_GRACE.
"""

import logging
from datetime import UTC, datetime

from service.jobs import TERMINAL, job_status
from service.queue import JobQueue
from service.storage import JobStore

ORPHAN_GRACE = 3600.0
log = logging.getLogger("service.cleanup")


def _last_change(store: JobStore, job_id: str) -> float:
    folder = store.folder(job_id)
    times = [folder.stat().st_mtime] + [entry.stat().st_mtime for entry in folder.iterdir()]
    return max(times)


def sweep(store: JobStore, queue: JobQueue, ttl: int, now: datetime | None = None) -> list[str]:
    """Remove every job finished more than `ttl` seconds before `now`; returns their ids."""
    now = now or datetime.now(UTC)
    removed = []
    for job_id in store.job_ids():
        job = queue.fetch(job_id)
        if job is None:
            try:
                idle = now.timestamp() - _last_change(store, job_id)
            except FileNotFoundError:
                continue
            if idle > max(ttl, ORPHAN_GRACE):
                store.remove(job_id)
                removed.append(job_id)
            continue
        if job_status(job) not in TERMINAL:
            continue
        ended = job.ended_at or job.created_at
        if "canceled_at" in job.meta and job.ended_at is None:
            ended = datetime.fromisoformat(job.meta["canceled_at"])
        if (now - ended).total_seconds() > ttl:
            queue.forget(job)
            store.remove(job_id)
            removed.append(job_id)
    if removed:
        log.info("removed %d expired jobs", len(removed))
    return removed
