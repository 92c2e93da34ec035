"""A real service for the tests: redis-server on a free port, a worker process and uvicorn, over HTTP."""

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import imageio_ffmpeg
import redis
from rq import Queue

from contract.queue import QUEUE_NAME, live_workers
from contract.settings import Settings
from service.launcher import EmbeddedRedis, free_port, stop_process, wait_until

ROOT = Path(__file__).resolve().parents[1]
SETTING_NAMES = {name.upper() for name in Settings.model_fields}
START_TIMEOUT = 120.0
SETTLE_TIMEOUT = 15.0  # how long a stack may take to finish what a test left running


def clean_env(**settings: str) -> dict[str, str]:
    """The test process's environment without any service setting of its own, plus `settings`.

    Workers run torch unless a test asks otherwise: RUNTIME=auto (the default) would convert each
    model for OpenVINO and time both runtimes at every fresh worker's start, and these tests are
    about the service (tests/integration/test_runtime_auto.py tests the choice)."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in SETTING_NAMES}
    return {**env, "RUNTIME": "torch", **settings}


def cut_clip(source: Path, out: Path, *args: str, loops: int = 0) -> Path:
    """Re-encode (part of) a real clip with ffmpeg, e.g. cut_clip(clip, out, "-t", "2")."""
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    codecs = [] if "-c:v" in args else ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"]
    command = [ffmpeg, "-v", "error", "-y", "-stream_loop", str(loops), "-i", str(source)]
    subprocess.run([*command, *args, *codecs, str(out)], check=True)
    return out


class ServiceStack:
    def __init__(self, folder: Path, weights_dir: Path, **settings: str):
        self.folder = folder
        self.data_dir = folder / "data"
        self.redis = EmbeddedRedis(folder / "redis")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = clean_env(
            REDIS_URL=self.redis.url,
            DATA_DIR=str(self.data_dir),
            WEIGHTS_DIR=str(weights_dir),
            **{"DEFAULT_MODEL": "small", **settings},
        )
        self.worker: subprocess.Popen | None = None
        self.api: subprocess.Popen | None = None
        self.api_env: dict[str, str] = {}
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def redis_client(self) -> redis.Redis:
        return redis.Redis(port=self.redis.port, socket_connect_timeout=1)

    def start(self) -> "ServiceStack":
        self.redis.start()
        self.start_worker()
        self.start_api()
        return self

    def __enter__(self) -> "ServiceStack":
        """Started; whatever did start is stopped again if a later part fails to."""
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start_api(self) -> None:
        command = [sys.executable, "-m", "service"]
        log = (self.folder / "api.log").open("ab")
        env = {**self.env, "PORT": str(self.port)}
        self.api_env = dict(self.env)
        self.api = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._answers, START_TIMEOUT, "the API", self.api)

    def _answers(self) -> bool:
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def start_worker(self, **settings: str) -> None:
        """A worker with the stack's settings, and `settings` over them."""
        log = (self.folder / "worker.log").open("ab")
        command = [sys.executable, "-m", "worker.run"]
        env = {**self.env, **settings}
        self.worker = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        pid = self.worker.pid
        wait_until(lambda: self._worker_published(pid), START_TIMEOUT, "the worker", self.worker)

    def _worker_published(self, pid: int) -> bool:
        try:
            return any(w["name"].endswith(f".{pid}") for w in live_workers(self.redis_client()))
        except redis.exceptions.RedisError:
            return False

    def stop_worker(self) -> int:
        status = stop_process(self.worker)
        self.worker = None
        return status

    def unsettled(self) -> str | None:
        """Why this stack is not as `start()` left it, or None: Redis, the API (with the stack's own
        settings) and one published worker running, no job waiting or running."""
        if self.redis.process is None or self.redis.process.poll() is not None:
            return "Redis is not running"
        if self.api is None or self.api.poll() is not None or self.api_env != self.env:
            return "the API is not running with the stack's settings"
        worker = self.worker
        if worker is None or worker.poll() is not None or not self._worker_published(worker.pid):
            return "no worker is running"
        queue = Queue(QUEUE_NAME, connection=self.redis_client())
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while queue.count or queue.started_job_registry.count:
            if time.monotonic() > deadline:
                return f"{queue.count} jobs waiting and {queue.started_job_registry.count} running"
            time.sleep(0.2)
        return None

    def close(self) -> None:
        self.http.close()
        for process in (self.api, self.worker):
            if process is not None:
                stop_process(process)
        self.redis.stop()

    def post(self, source: Path, driving: Path, **fields: str) -> httpx.Response:
        with source.open("rb") as image, driving.open("rb") as video:
            return self.http.post("/animate", files={"source": image, "driving": video}, data=fields)

    def wait_for(self, job_id: str, done, timeout: float = 300.0) -> dict:
        """Poll the job until done(job) holds; returns that job resource."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.http.get(f"/jobs/{job_id}").json()
            if done(job):
                return job
            assert time.monotonic() < deadline, f"job {job_id} stuck at {job}"
            time.sleep(0.05)

    def wait_finished(self, job_id: str, timeout: float = 300.0) -> dict:
        return self.wait_for(
            job_id, lambda job: job["status"] in ("succeeded", "failed", "canceled"), timeout
        )


class ReusedStack:
    """One ServiceStack from test to test while it stays as `start()` left it, else a new one: each
    test starts from a known state, and what one test left behind (a worker that did not stop, a job
    still running, a changed setting) cannot fail the tests after it."""

    def __init__(self, make: Callable[[], ServiceStack]):
        self.make = make
        self.current: ServiceStack | None = None

    def ready(self) -> ServiceStack:
        if self.current is not None:
            reason = self.current.unsettled()
            if reason is None:
                return self.current
            print(f"service stack replaced: {reason}", file=sys.stderr)
            self.current.close()
            self.current = None
        self.current = self.make().__enter__()
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
