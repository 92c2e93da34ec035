"""A job whose worker died, as the maintenance pass sees it: queued again while retries are left,
with one count of them in the log, RQ's and ours alike; failed with worker_lost after the last.

A real Redis and RQ's own worker bookkeeping: the job is taken as a worker takes it, then the
worker "dies" (its entry in the started registry lapses, as it does when heartbeats stop)."""

import logging
import re

import pytest
import redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from contract.job import JobRecord, JobRequest
from contract.maintenance import LostJobHandler, recover_lost_jobs
from contract.options import AnimationOptions
from contract.queue import JobQueue
from contract.storage import new_job_id
from service.launcher import EmbeddedRedis

RETRIES = 2


@pytest.fixture
def queue(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        yield JobQueue(redis.Redis(port=server.port), job_timeout=60, result_ttl=600, retries=RETRIES)
    finally:
        server.stop()


def _taken_and_lost(queue: JobQueue, job_id: str) -> None:
    """A worker takes the job from the queue, then stops heartbeating (killed)."""
    rq_queue = queue.queue
    worker = SimpleWorker([rq_queue], connection=queue.redis, serializer=JSONSerializer)
    job = rq_queue.fetch_job(job_id)
    rq_queue.remove(job)
    worker.prepare_execution(job)
    worker.prepare_job_execution(job)
    registry = rq_queue.started_job_registry
    assert registry.get_job_ids(cleanup=False) == [job_id]
    queue.redis.zadd(registry.key, dict.fromkeys(queue.redis.zrange(registry.key, 0, -1), 1))


def _counts(caplog, job_id: str) -> tuple[int, int]:
    """(ours, RQ's) retries left, as the two log lines of one maintenance pass say them."""
    lines = [
        record.getMessage()
        for record in caplog.records
        if job_id in record.getMessage() or getattr(record, "job_id", None) == job_id
    ]
    ours = [int(m[1]) for line in lines if (m := re.search(r"queued again \((\d+) retr", line))]
    theirs = [int(m[1]) for line in lines if (m := re.search(r"enqueued for retry, (\d+) remaining", line))]
    assert len(ours) == 1 and len(theirs) == 1, lines
    return ours[0], theirs[0]


def test_retries_are_counted_one_way_then_the_job_fails_worker_lost(queue, caplog):
    caplog.set_level(logging.INFO)
    job_id = new_job_id()
    request = JobRequest(model="starter", options=AnimationOptions())
    queue.enqueue(job_id, request, {"inputs": None})
    handler = LostJobHandler(queue.redis)
    for left in range(RETRIES - 1, -1, -1):
        caplog.clear()
        _taken_and_lost(queue, job_id)
        recover_lost_jobs(queue, handler)
        assert _counts(caplog, job_id) == (left, left)
        record = queue.fetch(job_id)
        assert record.status() == "queued" and record.job.retries_left == left
    caplog.clear()
    _taken_and_lost(queue, job_id)
    recover_lost_jobs(queue, handler)
    assert any("no retry left" in record.getMessage() for record in caplog.records)
    record: JobRecord = queue.fetch(job_id)
    assert record.status() == "failed" and record.error().code == "worker_lost"
