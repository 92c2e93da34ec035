"""The real service for the benchmarks: a private redis-server, uvicorn and worker processes.

Everything listens on 127.0.0.1 and writes its output to one log file in the run's folder. The three
service benchmarks differ only in the settings they pass and the workers they want.
"""

import os
import subprocess
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contract import live_channel  # noqa: E402
from contract.queue import connect, live_workers  # noqa: E402
from service.launcher import EmbeddedRedis, LaunchError, free_port, stop_process, wait_until  # noqa: E402

SMALL = ROOT.parent / "shared" / "fomm" / "fomm-small.pth.tar"
START_TIMEOUT = 180.0


def resave_checkpoint(source: Path, out: Path, size: int) -> Path:
    """`source` (e.g. the small reference checkpoint) re-saved at `out` to render `size` px frames."""
    from engine import load_checkpoint, save_checkpoint

    model = load_checkpoint(source)
    model.frame_shape = (size, size)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, model)
    return out


class BenchStack:
    """`render_workers` render workers and optionally one live worker behind one API."""

    def __init__(
        self, folder: Path, weights_dir: Path, render_workers: int = 1, live_worker: bool = False, **settings
    ):
        self.redis = EmbeddedRedis(folder / "redis")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "REDIS_URL": self.redis.url,
            "DATA_DIR": str(folder / "data"),
            "WEIGHTS_DIR": str(weights_dir),
            "DEFAULT_MODEL": "bench",
            **{name: str(value) for name, value in settings.items()},
        }
        self.log_path = folder / "service.log"
        self.log = self.log_path.open("ab")
        self.render_workers = render_workers
        self.live_worker = live_worker
        self.api: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    def _spawn(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, *args], env=self.env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT
        )

    def start(self) -> "BenchStack":
        self.redis.start()
        command = ["-m", "uvicorn", "service.app:create_app", "--factory", "--port", str(self.port)]
        self.api = self._spawn(*command, "--no-access-log")
        if self.live_worker:
            live = self._spawn("-m", "worker.live")
            self.workers.append(live)
            client = connect(self.redis.url)
            pattern = live_channel.WORKER_PREFIX + "*"
            self._wait(lambda: any(client.scan_iter(match=pattern)), "the live worker", live)
        for _ in range(self.render_workers):
            self.start_render_worker()
        wait_until(self._answers, 60, "the API", self.api)
        return self

    def start_render_worker(self) -> None:
        """One more render worker; returns once every render worker has registered with RQ."""
        worker = self._spawn("-m", "worker.run")
        self.workers.append(worker)
        client = connect(self.redis.url)
        wanted = len(self.workers) - int(self.live_worker)
        self._wait(lambda: len(live_workers(client)) == wanted, "the render workers", worker)

    def _wait(self, check, what: str, process: subprocess.Popen) -> None:
        """wait_until, failing as soon as `process` exits (a worker with no model it can serve, e.g.
        int8 without quantized graphs), with the end of the service log, which says why."""
        try:
            wait_until(check, START_TIMEOUT, what, process)
        except LaunchError as exc:
            self.log.flush()
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise LaunchError(f"{exc}; the service log ends:\n" + "\n".join(tail)) from None

    def stop_render_workers(self) -> None:
        """Only the API (and a live worker) stay: POSTs are answered, nothing renders."""
        keep = self.workers[:1] if self.live_worker else []
        for process in self.workers[len(keep) :]:
            stop_process(process)
        self.workers = keep

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        for process in reversed([p for p in (self.api, *self.workers) if p is not None]):
            stop_process(process)
        self.redis.stop()
        self.log.close()

    def __enter__(self) -> "BenchStack":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info) -> None:
        self.stop()
