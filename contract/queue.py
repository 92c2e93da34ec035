"""The job queue as both sides see it: RQ on Redis, plus the few keys of our own beside it.

Job arguments and metadata go through RQ's JSON serializer, not its default pickle: whoever can write
to Redis could otherwise make every worker run code of their choosing when it unpickles a job, and
JSON keeps the payload readable from any language. So a job carries only plain data: the job id, the
model name and the options; the files themselves stay in the job's folder.

Beside RQ's own keys:
- `animate:cancel:<id>`: a cancel request, read by the worker between frame batches (a SimpleWorker
  runs the job in its own process, so RQ cannot kill it);
- `animate:worker:<name>`: a worker's presence and its loaded models, refreshed while it lives,
  so the API can answer /readyz and /models without loading any model itself.
"""

import json
import socket
from typing import Any

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from rq import Queue
from rq import Retry as JobRetry
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from contract.capabilities import ModelCapabilities
from contract.job import JobRecord, JobRequest

QUEUE_NAME = "animate"
JOB_FUNCTION = "worker.jobs.render_job"  # by name: the API never imports the engine
CANCEL_PREFIX = "animate:cancel:"
WORKER_PREFIX = "animate:worker:"
PRESENCE_INTERVAL = 5.0  # seconds between refreshes of a worker's presence key (both kinds)
PRESENCE_TTL = 15  # seconds a presence key outlives its last refresh
WAITING = {JobStatus.CREATED, JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED}


def connect(url: str) -> Redis:
    """A client that fails fast while Redis is down (one quick retry), so callers can answer 503."""
    return Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10, retry=Retry(NoBackoff(), 1))


def host_is_present(url: str, prefix: str) -> bool:
    """Whether a process of this host has published its presence under `prefix` (health checks)."""
    try:
        return any(connect(url).scan_iter(match=f"{prefix}{socket.gethostname()}.*"))
    except RedisError:
        return False


class JobQueue:
    def __init__(self, redis: Redis, job_timeout: int, result_ttl: int, retries: int = 0):
        self.redis = redis
        self.queue = Queue(QUEUE_NAME, connection=redis, serializer=JSONSerializer)
        self.job_timeout = job_timeout
        self.result_ttl = result_ttl
        self.retries = retries

    def enqueue(self, job_id: str, request: JobRequest, meta: dict[str, Any]) -> JobRecord:
        """Queue a render; it waits in the queue for as long as it takes (ttl=None). Its retries are
        only for a worker that died under it (contract/maintenance.py); the worker fails a job that
        raised at once."""
        job = self.queue.enqueue_call(
            JOB_FUNCTION,
            args=(job_id, request.model_dump(mode="json")),
            job_id=job_id,
            timeout=self.job_timeout,
            result_ttl=self.result_ttl,
            failure_ttl=self.result_ttl,
            ttl=None,
            meta=meta,
            description=f"render {job_id}",
            retry=JobRetry(max=self.retries) if self.retries else None,
        )
        return JobRecord(job)

    def fetch(self, job_id: str) -> JobRecord | None:
        try:
            return JobRecord(Job.fetch(job_id, connection=self.redis, serializer=JSONSerializer))
        except NoSuchJobError:
            return None

    def waiting(self) -> int:
        return self.queue.count

    def running(self) -> int:
        return self.queue.started_job_registry.count

    def request_cancel(self, record: JobRecord) -> bool:
        """Flag the job for its worker and take it off the queue if no worker has it yet; True when
        it was taken off (it is canceled now, not at the worker's next batch: the caller ends it)."""
        job = record.job
        self.redis.set(CANCEL_PREFIX + job.id, "1", ex=self.job_timeout + 3600)
        if job.get_status() in WAITING:
            try:
                job.cancel()
            except InvalidJobOperation:
                return False
            return True
        return False

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.redis.exists(CANCEL_PREFIX + job_id))

    def forget(self, record: JobRecord) -> None:
        self.redis.delete(CANCEL_PREFIX + record.id)
        try:
            record.job.delete()
        except ValueError:  # RQ still lists an execution whose record already expired
            self.redis.delete(record.job.key)


def live_workers(redis: Redis) -> list[dict[str, Any]]:
    """What every worker alive now published: name, device and loaded models."""
    keys = sorted(redis.scan_iter(match=WORKER_PREFIX + "*", count=100))
    values = redis.mget(keys) if keys else []
    return [json.loads(value) for value in values if value is not None]


def loaded_models(redis: Redis) -> dict[str, ModelCapabilities]:
    """Each model some worker alive has loaded, as the first of them describes it."""
    found: dict[str, ModelCapabilities] = {}
    for worker in live_workers(redis):
        for model in worker.get("models", []):
            if model.get("name") not in found:
                found[model["name"]] = ModelCapabilities.model_validate(model)
    return found
