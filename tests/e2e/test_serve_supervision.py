"""`make serve` (service/launcher.py) killed outright: its children must not run on unsupervised.

The launcher is started as `make serve` starts it, with the bundled starter model, and killed with
SIGKILL once everything answers; Redis, the API, the worker and the live worker must all be gone
within seconds, though nothing could tell them to stop.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.launcher import free_port
from tests.service_stack import ROOT, clean_env

pytestmark = pytest.mark.slow
CHILDREN = {"Redis": "redis-server", "API": "-m service", "worker": "worker.run", "live": "worker.live"}
GONE_WITHIN = 20.0  # the API's SHUTDOWN_TIMEOUT_SECONDS (10) and then some


def _children(pid: int) -> dict[int, str]:
    """The processes `pid` started, by pid: their command lines."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with_nuls = Path(f"/proc/{child}/cmdline").read_bytes()
            found[int(child)] = with_nuls.replace(b"\0", b" ").decode()
    return found


def _alive(pid: int) -> bool:
    """Running, not merely a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.2)
    return found


def _named(children: dict[int, str]) -> dict[str, int]:
    """Each expected child's pid, once all of them are there."""
    named = {}
    for name, marker in CHILDREN.items():
        pids = [pid for pid, command in children.items() if marker in command]
        if pids:
            named[name] = pids[0]
    return named if len(named) == len(CHILDREN) else {}


def test_the_children_of_make_serve_die_with_it_even_on_kill_9(tmp_path):
    port = free_port()
    env = clean_env(
        DATA_DIR=str(tmp_path / "data"),
        WEIGHTS_DIR=str(ROOT / "weights"),
        DEFAULT_MODEL="starter",
        PORT=str(port),
        LOG_LEVEL="WARNING",
    )
    log = (tmp_path / "serve.log").open("w")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "service.launcher"], env=env, cwd=ROOT, stdout=log, stderr=log
    )
    children: dict[str, int] = {}
    try:
        children = _wait(lambda: _named(_children(launcher.pid)), 60, "the launcher's four children")
        _wait(lambda: _ready(f"http://127.0.0.1:{port}"), 180, "make serve ready")
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        left = lambda: {name: pid for name, pid in children.items() if _alive(pid)}  # noqa: E731
        deadline = time.monotonic() + GONE_WITHIN
        while left() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left(), f"still running {GONE_WITHIN:g} s after the launcher was killed: {left()}"
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        for pid in children.values():  # whatever survived the test is not left behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        log.close()
