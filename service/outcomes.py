"""What happens once when a job reaches a terminal state, wherever that happens.

The worker (done, failed, canceled while running, timed out), the API (canceled while queued) and
the lost-job pass (its worker died on the last attempt) all call `job_ended`: the metrics count it
and its webhook, if it has one, is scheduled.
"""

import logging

import redis
from redis import Redis
from rq.job import Job

from service.metrics import record_finished
from service.webhooks import schedule

log = logging.getLogger("service.jobs")


def job_ended(
    client: Redis,
    job: Job,
    status: str,
    code: str | None = None,
    seconds: float | None = None,
    frames: int = 0,
    stages: dict[str, float] | None = None,
) -> None:
    """Best effort: a Redis hiccup here must not turn the job's own outcome into an error."""
    extra = {"job_id": job.id, "status": status, "code": code}
    log.info("job ended: %s%s", status, f" ({code})" if code else "", extra=extra)
    try:
        record_finished(client, status, code, seconds, frames, stages)
        if job.meta.get("webhook_url"):
            schedule(client, job.id)
    except redis.exceptions.RedisError as exc:
        log.warning("could not record the end of the job: %s", exc, extra=extra)
