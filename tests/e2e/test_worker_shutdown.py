"""A worker stopped with SIGTERM mid-job, for real (Redis, the API, worker processes, the bundled starter
model): it finishes the job when the job fits in WORKER_STOP_GRACE, else hands it back to the queue
for another worker; either way the job runs to success exactly once, no attempt is counted as failed
or retried, and the stopped worker exits 0 within the grace (worker/shutdown.py)."""

import shutil
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from rq import Worker
from rq.job import Job
from rq.results import Result
from rq.serializers import JSONSerializer

from contract.queue import QUEUE_NAME
from service.launcher import EmbeddedRedis, wait_until
from tests.hostile_media import gradient, image_bytes, make_clip
from tests.service_stack import ROOT, ServiceStack
from worker.run import ModelWorker

pytestmark = pytest.mark.slow
JOB_RETRIES = 2
FRAMES = {"short.mp4": 600, "long.mp4": 1200}  # 64 px at 25 fps: 3.5 and 7 s of rendering on 2 idle cores


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shutdown-media")
    (folder / "source.png").write_bytes(image_bytes(gradient(64, 64), "PNG"))
    for name, frames in FRAMES.items():
        make_clip(folder / name, frames / 25, 64, 25)
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shutdown-weights")
    shutil.copy(ROOT / "weights" / "starter.pth.tar", folder)
    return folder


def _stack(tmp_path: Path, weights: Path, grace: float) -> ServiceStack:
    return ServiceStack(
        tmp_path,
        weights,
        DEFAULT_MODEL="starter",
        WORKER_STOP_GRACE=str(grace),
        JOB_RETRIES=str(JOB_RETRIES),
        BATCH_SIZE="2",
    )


def _submit_and_wait_rendering(stack: ServiceStack, driving: Path) -> str:
    response = stack.post(driving.with_name("source.png"), driving, crop="none")
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    stack.wait_for(job_id, lambda j: j["status"] == "started" and j["progress"]["frames_done"] > 0)
    return job_id


def _terminate(worker: subprocess.Popen, grace: float) -> tuple[int, float, datetime]:
    """SIGTERM; the exit status, the seconds it took and when the signal was sent."""
    signaled_at, began = datetime.now(UTC), time.monotonic()
    worker.send_signal(signal.SIGTERM)
    status = worker.wait(grace + 30)  # past the grace: the assertion on the seconds says by how much
    return status, time.monotonic() - began, signaled_at


def _listening(stack: ServiceStack) -> bool:
    """The worker's RQ state is idle: it is blocked waiting on the queue."""
    pid = stack.worker.pid
    workers = Worker.all(connection=stack.redis_client())
    return any(w.name.split(".")[-2] == str(pid) and w.get_state() == "idle" for w in workers)


def _executions(stack: ServiceStack, job_id: str) -> list[Result]:
    job = Job.fetch(job_id, connection=stack.redis_client(), serializer=JSONSerializer)
    assert job.retries_left == JOB_RETRIES, "an attempt was counted as a retry"
    return job.results()


def test_a_job_that_fits_in_the_grace_finishes_and_the_worker_exits_0(tmp_path, weights, media):
    grace = 600.0  # the 600 frames took 110 s on a 2-core machine shared with other renders
    with _stack(tmp_path, weights, grace) as stack:
        job_id = _submit_and_wait_rendering(stack, media / "short.mp4")
        worker_name = stack.redis_client().hget(f"rq:job:{job_id}", "worker_name").decode()
        status, seconds, signaled_at = _terminate(stack.worker, grace)
        stack.worker = None
        assert status == 0 and seconds < grace, (status, seconds)

        done = stack.wait_finished(job_id, timeout=5)  # no worker is left: it finished before exiting
        assert done["status"] == "succeeded" and done["progress"]["frames_done"] == FRAMES["short.mp4"], done
        assert datetime.fromisoformat(done["finished_at"]) > signaled_at  # it was mid-job at the signal
        [execution] = _executions(stack, job_id)
        assert execution.type == Result.Type.SUCCESSFUL and execution.worker_name == worker_name
        assert stack.http.get(f"/jobs/{job_id}/result").status_code == 200


def test_a_job_longer_than_the_grace_is_handed_back_and_finished_once_by_another_worker(
    tmp_path, weights, media
):
    grace = 8.0  # handed back 4 s after the signal (worker/shutdown.py): before the job's end
    with _stack(tmp_path, weights, grace) as stack:
        job_id = _submit_and_wait_rendering(stack, media / "long.mp4")
        stopping = stack.worker
        stack.start_worker()  # the next worker, idle, waiting on the queue as in a rolling update
        status, seconds, _ = _terminate(stopping, grace)
        assert status == 0 and seconds < grace, (status, seconds)

        done = stack.wait_finished(job_id, timeout=600)
        assert done["status"] == "succeeded" and done["progress"]["frames_done"] == FRAMES["long.mp4"], done
        assert done["error"] is None
        [execution] = _executions(stack, job_id)  # the handed-back attempt left no failed result
        assert execution.type == Result.Type.SUCCESSFUL
        assert execution.worker_name.rsplit(".", 1)[0].endswith(f".{stack.worker.pid}")
        log = (stack.folder / "worker.log").read_text()
        assert f"job {job_id} handed back to the queue" in log
        assert "Traceback" not in log


def test_an_idle_worker_exits_0_at_once_every_time(tmp_path, weights):
    """RQ stops its pub/sub listener after unsubscribing; the listener, once it has read the reply,
    waits up to a minute for a new subscription while RQ joins it: about one stop in three outlived
    its grace (issue 25's `assert -9 == 0`). worker/run.py stops the listener first."""
    stack = _stack(tmp_path, weights, grace=20)
    stack.redis.start()
    try:
        for _ in range(5):
            stack.start_worker()
            wait_until(lambda: _listening(stack), 30, "the worker waiting on the queue")
            status, seconds, _ = _terminate(stack.worker, 20)
            stack.worker = None
            assert status == 0 and seconds < 5, (status, seconds)
    finally:
        stack.close()


def test_the_pubsub_listener_stops_at_once_every_time(tmp_path):
    """The race behind the stop above, run often enough to be seen: RQ's own order hangs in about one
    stop in five on 2 cores, here each stop is bounded by a 3 s wait."""
    redis_server = EmbeddedRedis(tmp_path / "redis")
    redis_server.start()
    try:
        worker = ModelWorker(
            [QUEUE_NAME],
            connection=redis.Redis(port=redis_server.port),
            serializer=JSONSerializer,
            context=None,  # unused by the listener
            heartbeat_interval=1,
        )
        for attempt in range(40):
            worker.subscribe()
            stopper = threading.Thread(target=worker.unsubscribe, daemon=True)
            stopper.start()
            stopper.join(3)
            assert not stopper.is_alive(), f"stop {attempt} still waiting on the listener after 3 s"
    finally:
        redis_server.stop()
