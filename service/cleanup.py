"""The periodic sweep that makes results expire after RESULT_TTL.

RQ drops its own record of a finished job after the same TTL, but the job's files (inputs and
result, in a folder or a bucket) are ours to remove. Files with no job record are kept while any of
them is recent, because that is an upload being committed, and removed once older than ORPHAN_GRACE.
"""

import logging
from datetime import UTC, datetime

from contract.job import TERMINAL
from contract.queue import JobQueue
from contract.storage import JobStore

ORPHAN_GRACE = 3600.0
log = logging.getLogger("service.cleanup")


def sweep(store: JobStore, queue: JobQueue, ttl: int, now: datetime | None = None) -> list[str]:
    """Remove every job finished more than `ttl` seconds before `now`; returns their ids. A store or
    Redis error stops the pass (the caller tries again later) and leaves every job consistent."""
    now = now or datetime.now(UTC)
    removed = [job_id for job_id in store.job_ids() if _remove_if_expired(store, queue, job_id, ttl, now)]
    if removed:
        log.info("removed %d expired jobs", len(removed))
    return removed


def _remove_if_expired(store: JobStore, queue: JobQueue, job_id: str, ttl: int, now: datetime) -> bool:
    record = queue.fetch(job_id)
    if record is None:
        changed = store.last_change(job_id)
        if changed is None or now.timestamp() - changed <= max(ttl, ORPHAN_GRACE):
            return False
        store.remove(job_id)
        return True
    if record.status() not in TERMINAL:
        return False
    ended = record.ended_at or record.job.created_at
    if (now - ended).total_seconds() <= ttl:
        return False
    store.remove(job_id)  # the files first: if the store fails here, the record stays to find them again
    queue.forget(record)
    return True
