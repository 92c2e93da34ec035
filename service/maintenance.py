"""Finding jobs whose worker died (SIGKILL, a lost machine) and giving them another chance.

A busy worker refreshes its job's heartbeat every HEARTBEAT_INTERVAL seconds with a TTL of three
intervals (worker/run.py). When the heartbeat lapses, RQ's registry cleanup, run every
MAINTENANCE_INTERVAL seconds by idle workers and by the API, treats the job as abandoned: queued
again while it has retries left (JOB_RETRIES), else failed, which the API shows as `worker_lost`.
So a lost job is noticed within 3 x HEARTBEAT_INTERVAL + MAINTENANCE_INTERVAL (a minute by default).

`LostJobHandler` is the RQ exception handler both run it with: it removes what the dead attempt
left in the job's folder (its partial MP4; nobody writes there until the job is queued again, after
the handler) and, on the last attempt, records the job's end.
"""

import logging

from redis import Redis
from rq.exceptions import AbandonedJobError
from rq.job import Job
from rq.registry import clean_registries

from service.outcomes import job_ended
from service.queue import JobQueue
from service.storage import JobStore

log = logging.getLogger("service.maintenance")


class LostJobHandler:
    def __init__(self, client: Redis, store: JobStore):
        self.client = client
        self.store = store

    def __call__(self, job: Job, exc_type, exc_value, traceback) -> bool:
        if exc_type is not AbandonedJobError:
            return True
        self.store.remove_partials(job.id)
        job.meta.pop("progress", None)
        if job.retries_left:
            log.warning(
                "job lost by its worker: queued again (%d retries left)",
                job.retries_left,
                extra={"job_id": job.id},
            )
        else:
            log.warning("job lost by its worker: no retry left", extra={"job_id": job.id})
            job_ended(self.client, job, "failed", "worker_lost")
        return True


def recover_lost_jobs(queue: JobQueue, handler: LostJobHandler) -> None:
    """One maintenance pass over the queue's registries, unless a worker is running one now."""
    rq_queue = queue.queue
    if not rq_queue.acquire_maintenance_lock():
        return
    try:
        clean_registries(rq_queue, [handler])
    finally:
        rq_queue.release_maintenance_lock()
