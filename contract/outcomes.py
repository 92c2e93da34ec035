"""The end of a job, wherever it happens: recorded once, counted, and its webhook scheduled.

The worker (succeeded, failed, canceled while running, timed out), the API (canceled while queued)
and the lost-job pass (its worker died on the last attempt) all call `job_ended`. It writes the
job's `Outcome` (the one place its terminal status is read from), counts it for /metrics and, if the
job has a webhook, schedules its delivery, which the API processes carry out (service/webhooks.py).
"""

import logging
import time

import redis
from redis import Redis

from contract.job import ErrorDetail, JobRecord, Outcome, OutcomeName, now
from contract.metrics import record_finished

WEBHOOKS_DUE_KEY = "animate:webhooks:due"  # sorted set: job id by the time its delivery is due
log = logging.getLogger("contract.outcomes")


def schedule_webhook(client: Redis, job_id: str, delay: float = 0.0) -> None:
    client.zadd(WEBHOOKS_DUE_KEY, {job_id: time.time() + delay})


def job_ended(
    client: Redis,
    record: JobRecord,
    status: OutcomeName,
    error: ErrorDetail | None = None,
    seconds: float | None = None,
    frames: int = 0,
    stages: dict[str, float] | None = None,
) -> None:
    """Best effort: a Redis hiccup here must not turn the job's own outcome into an error."""
    code = error.code if error is not None else None
    extra = {"job_id": record.id, "status": status, "code": code}
    log.info("job ended: %s%s", status, f" ({code})" if code else "", extra=extra)
    try:
        record.save(outcome=Outcome(status=status, at=now(), error=error))
        record_finished(client, status, code, seconds, frames, stages)
        if record.webhook_url:
            schedule_webhook(client, record.id)
    except redis.exceptions.RedisError as exc:
        log.warning("could not record the end of the job: %s", exc, extra=extra)
