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
    """Remove every job finished more than `ttl` seconds before `now`; returns their ids."""
    now = now or datetime.now(UTC)
    removed = []
    for job_id in store.job_ids():
        record = queue.fetch(job_id)
        if record is None:
            changed = store.last_change(job_id)
            if changed is not None and now.timestamp() - changed > max(ttl, ORPHAN_GRACE):
                store.remove(job_id)
                removed.append(job_id)
            continue
        if record.status() not in TERMINAL:
            continue
        ended = record.ended_at or record.job.created_at
        if (now - ended).total_seconds() > ttl:
            queue.forget(record)
            store.remove(job_id)
            removed.append(job_id)
    if removed:
        log.info("removed %d expired jobs", len(removed))
    return removed
