"""Finding jobs whose worker died (SIGKILL, a lost machine) and giving them another chance.

A busy worker refreshes its job's heartbeat every HEARTBEAT_INTERVAL seconds with a TTL of three
intervals (worker/run.py). When the heartbeat lapses, RQ's registry cleanup, run every
MAINTENANCE_INTERVAL seconds by idle workers and by the API, treats the job as abandoned: queued
again while it has retries left (JOB_RETRIES), else failed, which the API shows as `worker_lost`.
So a lost job is noticed within 3 x HEARTBEAT_INTERVAL + MAINTENANCE_INTERVAL (a minute by default).

`LostJobHandler` is the RQ exception handler both run it with: it clears the dead attempt's progress
and, on the last attempt, records the job's end. The dead attempt wrote nothing to the store: a
worker renders into its own scratch folder (removed when a worker starts on that machine again) and
publishes only a finished file.
"""

import logging

from redis import Redis
from rq.exceptions import AbandonedJobError
from rq.job import Job
from rq.registry import clean_registries

from contract.job import ErrorDetail, JobRecord
from contract.outcomes import job_ended
from contract.queue import JobQueue

log = logging.getLogger("contract.maintenance")


class LostJobHandler:
    def __init__(self, client: Redis):
        self.client = client

    def __call__(self, job: Job, exc_type, exc_value, traceback) -> bool:
        if exc_type is not AbandonedJobError:
            return True
        job.meta.pop("progress", None)
        if job.retries_left:
            # RQ takes this retry off the count after its handlers ran: say what will be left, as it does
            left = job.retries_left - 1
            log.warning(
                "job lost by its worker: queued again (%d %s left)",
                left,
                "retry" if left == 1 else "retries",
                extra={"job_id": job.id},
            )
        else:
            log.warning("job lost by its worker: no retry left", extra={"job_id": job.id})
            lost = ErrorDetail(code="worker_lost", message="the worker running this job stopped unexpectedly")
            job_ended(self.client, JobRecord(job), "failed", lost)
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
