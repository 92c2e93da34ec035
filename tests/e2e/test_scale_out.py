"""Many machines: the API and two workers, each with a DATA_DIR of its own, share only Redis and an
S3 store (a real S3 wire-protocol server), as they would on separate machines."""

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from contract.queue import JobQueue, connect
from contract.settings import Settings
from contract.storage import open_store
from service.cleanup import sweep
from service.launcher import free_port, stop_process, wait_until
from tests.s3_server import S3Server
from tests.service_stack import ROOT, START_TIMEOUT, ServiceStack, cut_clip


class Cluster:
    def __init__(self, stack: ServiceStack, s3: S3Server, root: Path):
        self.stack = stack
        self.s3 = s3
        self.root = root
        self.workers: list[subprocess.Popen] = []

    def start_worker(self, name: str) -> subprocess.Popen:
        data_dir = self.root / name
        env = {**self.stack.env, "DATA_DIR": str(data_dir)}
        log = (self.root / f"{name}.log").open("ab")
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker.run"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        pid = worker.pid
        wait_until(lambda: self.stack._worker_published(pid), START_TIMEOUT, name, worker)
        self.workers.append(worker)
        return worker

    def start_api(self, **settings: str) -> tuple[subprocess.Popen, httpx.Client]:
        """Another API process (another machine) on the same Redis and store."""
        port = free_port()
        env = {**self.stack.env, "DATA_DIR": str(self.root / f"api-{port}"), **settings}
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "service.app:create_app",
            "--factory",
            "--port",
            str(port),
        ]
        log = (self.root / f"api-{port}.log").open("ab")
        api = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

        def answers() -> bool:
            try:
                return http.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, START_TIMEOUT, "the second API", api)
        return api, http

    def worker_running(self, job_id: str) -> subprocess.Popen:
        job = Job.fetch(job_id, connection=self.stack.redis_client(), serializer=JSONSerializer)
        pid = int(job.worker_name.split(".")[-2])  # host.pid.incarnation
        return next(worker for worker in self.workers if worker.pid == pid)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, small_checkpoint):
    root = tmp_path_factory.mktemp("cluster")
    with S3Server(root / "s3") as s3:
        settings = {
            **s3.env(),
            "RESULT_DELIVERY": "redirect",
            "S3_MULTIPART_MB": "1",
            "HEARTBEAT_INTERVAL": "1",
            "MAINTENANCE_INTERVAL": "2",
            "BATCH_SIZE": "2",
        }
        stack = ServiceStack(root / "api", small_checkpoint.parent, **settings)
        cluster = Cluster(stack, s3, root)
        try:
            stack.redis.start()
            stack.start_api()
            cluster.start_worker("worker-a")
            cluster.start_worker("worker-b")
            yield cluster
        finally:
            for worker in cluster.workers:
                stop_process(worker)
            stack.close()


@pytest.fixture(scope="module")
def clips(tmp_path_factory, clip) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("clips")
    short = cut_clip(clip, folder / "short.mp4", "-t", "0.6", "-vf", "scale=128:128")
    long = cut_clip(clip, folder / "long.mp4", "-t", "6", "-vf", "scale=128:128")
    return short, long


def _download_presigned(http: httpx.Client, job_id: str, endpoint: str) -> bytes:
    answer = http.get(f"/jobs/{job_id}/result", follow_redirects=False)
    assert answer.status_code == 307, answer.text
    location = answer.headers["location"]
    assert location.startswith(endpoint + "/") and "X-Amz-Signature=" in location
    video = httpx.get(location, timeout=30)
    assert video.status_code == 200
    return video.content


def test_jobs_spread_over_machines_succeed_and_download(cluster, portrait, clips):
    stack, s3 = cluster.stack, cluster.s3
    short, _ = clips
    ids = []
    for _ in range(4):
        answer = stack.post(portrait, short, crop="none")
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["id"])
    for job_id in ids:
        assert stack.wait_finished(job_id, timeout=240)["status"] == "succeeded"
        video = _download_presigned(stack.http, job_id, s3.endpoint)
        assert video[4:8] == b"ftyp"
        assert f"tenant-a/{job_id}/result.mp4" in s3.objects()

    # No machine kept a job's files: the API's staging and the workers' scratch are empty.
    for name in ("worker-a", "worker-b"):
        scratch = cluster.root / name / "scratch" / "workers"
        assert all(not any(folder.iterdir()) for folder in scratch.iterdir())
        assert not (cluster.root / name / "jobs").exists()
    assert not any((stack.data_dir / "scratch" / "uploads").iterdir())
    assert not (stack.data_dir / "jobs").exists()

    # Another API process streams the result itself, Range included (RESULT_DELIVERY=proxy).
    api, http = cluster.start_api(RESULT_DELIVERY="proxy")
    try:
        whole = http.get(f"/jobs/{ids[0]}/result")
        assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
        assert whole.content == _download_presigned(stack.http, ids[0], s3.endpoint)
        part = http.get(f"/jobs/{ids[0]}/result", headers={"Range": "bytes=4-11"})
        assert part.status_code == 206 and part.content == whole.content[4:12]
        assert part.headers["content-range"] == f"bytes 4-11/{len(whole.content)}"
        beyond = http.get(f"/jobs/{ids[0]}/result", headers={"Range": f"bytes={len(whole.content)}-"})
        assert beyond.status_code == 416 and beyond.json()["error"]["code"] == "range_not_satisfiable"
    finally:
        http.close()
        stop_process(api)

    # Deleting a finished job removes its objects from the store.
    assert stack.http.delete(f"/jobs/{ids[1]}").status_code == 204
    assert not [key for key in s3.objects() if ids[1] in key]


def test_a_worker_killed_mid_job_is_replaced_by_the_other(cluster, portrait, clips):
    stack = cluster.stack
    _, long = clips
    job_id = stack.post(portrait, long, crop="none").json()["id"]
    stack.wait_for(job_id, lambda job: job["status"] == "started" and job["progress"]["frames_done"] > 0)
    victim = cluster.worker_running(job_id)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    cluster.workers.remove(victim)

    job = stack.wait_finished(job_id, timeout=300)
    assert job["status"] == "succeeded", job
    assert _download_presigned(stack.http, job_id, cluster.s3.endpoint)[4:8] == b"ftyp"


def test_expired_jobs_leave_the_store(cluster, portrait, clips, monkeypatch, tmp_path):
    stack, s3 = cluster.stack, cluster.s3
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    store = open_store(Settings(storage_url=s3.env()["STORAGE_URL"], scratch_dir=tmp_path))
    job_id = stack.post(portrait, clips[0], crop="none").json()["id"]
    assert stack.wait_finished(job_id, timeout=240)["status"] == "succeeded"
    queue = JobQueue(connect(stack.redis.url), job_timeout=60, result_ttl=3600)

    assert job_id in store.job_ids() and job_id not in sweep(store, queue, ttl=3600)
    removed = sweep(store, queue, ttl=3600, now=datetime.now(UTC) + timedelta(hours=2))
    assert job_id in removed
    assert not [key for key in s3.objects() if job_id in key]
    assert stack.http.get(f"/jobs/{job_id}").status_code == 404
