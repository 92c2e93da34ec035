"""Outages of the object store (and of Redis) with the service running: real processes throughout.

The store is `rclone serve s3` (tests/s3_server.py), stopped for a few seconds and started again on
the same port and folder, as a store that goes away and comes back would; Redis is restarted on its
append-only file. Each test checks that the outage leaves a consistent state that works again once
the store is back: a DELETE keeps its job until the objects are gone, an Idempotency-Key is released
by a request the outage refused, the API's background duties keep going, and a worker's job waits
for the store (retried, handed back to the queue) instead of failing, up to its deadline.
"""

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.launcher import free_port, stop_process, wait_until
from tests.hostile_media import gradient, image_bytes, make_clip
from tests.s3_server import S3Server
from tests.service_stack import ROOT, START_TIMEOUT, ServiceStack

pytestmark = pytest.mark.slow
OUTAGE = 4.0  # seconds a store outage lasts
STORE_RETRY = 1.5  # STORE_RETRY_SECONDS of the worker under test
STORE_DEADLINE = 15.0  # STORE_OUTAGE_SECONDS of the worker under test


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("store") / "s3") as server:
        yield server


@pytest.fixture(scope="module")
def api(tmp_path_factory, s3) -> Iterator[ServiceStack]:
    """Redis and the API on the S3 store; no worker until a test starts one."""
    stack = ServiceStack(
        tmp_path_factory.mktemp("api"),
        ROOT / "weights",
        **s3.env(),
        STORE_RETRY_SECONDS=str(STORE_RETRY),
        STORE_OUTAGE_SECONDS=str(STORE_DEADLINE),
        BATCH_SIZE="2",
    )
    stack.env["DEFAULT_MODEL"] = "starter"  # the bundled model: no shared fixture needed
    try:
        stack.redis.start()
        stack.start_api()
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    make_clip(folder / "short.mp4", 0.5, 64, 10)
    make_clip(folder / "long.mp4", 30.0, 64, 10)  # 300 frames: long enough to stop the store meanwhile
    (folder / "source.png").write_bytes(image_bytes(gradient(64, 64), "PNG"))
    return folder


@contextlib.contextmanager
def store_down(s3: S3Server) -> Iterator[None]:
    """The store unreachable (its server stopped) for the block; then the same store again."""
    stop_process(s3.process, timeout=5)
    try:
        yield
    finally:
        s3.__enter__()


def _submit(api: ServiceStack, media: Path, clip: str = "short.mp4", **headers: str) -> httpx.Response:
    files = {"source": ("s.png", (media / "source.png").read_bytes())}
    files["driving"] = ("d.mp4", (media / clip).read_bytes())
    return api.http.post("/animate", files=files, data={"crop": "none"}, headers=headers)


def _queued(api: ServiceStack, media: Path, clip: str = "short.mp4") -> str:
    answer = _submit(api, media, clip)
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def _objects(s3: S3Server, job_id: str) -> list[str]:
    return [key for key in s3.objects() if job_id in key]


def _error(answer: httpx.Response, status: int) -> str:
    assert answer.status_code == status, answer.text
    return answer.json()["error"]["code"]


def _wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.1)
    return found


def test_delete_during_an_outage_keeps_the_job_until_its_objects_are_gone(api, s3, media):
    job_id = _queued(api, media)
    assert api.http.delete(f"/jobs/{job_id}").json()["status"] == "canceled"
    assert len(_objects(s3, job_id)) == 2
    with store_down(s3):
        assert _error(api.http.delete(f"/jobs/{job_id}"), 503) == "storage_unavailable"
        listed = api.http.get(f"/jobs/{job_id}")
        assert listed.status_code == 200 and listed.json()["status"] == "canceled", listed.text
    assert api.http.delete(f"/jobs/{job_id}").status_code == 204
    assert _objects(s3, job_id) == []
    assert api.http.get(f"/jobs/{job_id}").status_code == 404


def _header_bomb(media: Path) -> tuple[bytes, str]:
    """A multipart body whose source part carries a megabyte of part headers."""
    boundary = "bomb0123456789"
    bomb = "".join(f"X-Filler-{n}: {'a' * 1000}\r\n" for n in range(1000))
    disposition = "Content-Disposition: form-data; name={}; filename={}\r\n"
    parts = [
        f"--{boundary}\r\n{disposition.format('source', 's.png')}{bomb}\r\n".encode()
        + (media / "source.png").read_bytes(),
        f"--{boundary}\r\n{disposition.format('driving', 'd.mp4')}\r\n".encode()
        + (media / "short.mp4").read_bytes(),
    ]
    return b"\r\n".join(parts) + f"\r\n--{boundary}--\r\n".encode(), boundary


def test_a_key_refused_by_an_outage_works_again_and_bad_requests_stay_400(api, s3, media):
    key = {"Idempotency-Key": f"outage-{time.time_ns()}"}
    body, boundary = _header_bomb(media)
    bomb = {"content-type": f"multipart/form-data; boundary={boundary}"}
    with store_down(s3):
        assert _error(api.http.post("/animate", content=body, headers=bomb), 400) == "bad_request"
        nameless = api.http.post("/animate", files={"": ("x", b"x")})
        assert _error(nameless, 400) == "bad_request"
        assert _error(_submit(api, media, **key), 503) == "storage_unavailable"
    first = _submit(api, media, **key)
    assert first.status_code == 202, first.text
    replayed = _submit(api, media, **key)
    assert replayed.status_code == 202 and replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json()["id"] == first.json()["id"]
    assert _error(api.http.post("/animate", content=body, headers=bomb), 400) == "bad_request"
    assert api.http.delete(f"/jobs/{first.json()['id']}").status_code == 202


def _start_api(api: ServiceStack, **settings: str) -> tuple[subprocess.Popen, httpx.Client, Path]:
    """Another API process on the same Redis and store, with its own settings."""
    port = free_port()
    log = api.folder / f"api-{port}.log"
    env = {**api.env, **settings, "PORT": str(port)}
    process = subprocess.Popen(
        [sys.executable, "-m", "service"], env=env, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def answers() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return http.get("/healthz").status_code == 200
        return False

    wait_until(answers, START_TIMEOUT, "the second API", process)
    return process, http, log


def test_the_expiry_sweep_outlives_store_and_redis_outages(api, s3, media):
    """The sweep fails through an outage of the store, then of Redis, keeps going, removes the job
    that expired meanwhile with its objects, and the API still stops cleanly afterwards."""
    process, http, log = _start_api(api, RESULT_TTL="3", CLEANUP_INTERVAL="1", MAINTENANCE_INTERVAL="1")
    try:
        job_id = _queued(api, media)
        assert http.delete(f"/jobs/{job_id}").json()["status"] == "canceled"
        with store_down(s3):
            time.sleep(OUTAGE)
        api.redis.stop()
        time.sleep(OUTAGE)
        api.redis.start()
        _wait(lambda: http.get(f"/jobs/{job_id}").status_code == 404, 30, "the expired job swept")
        assert _objects(s3, job_id) == []
    finally:
        http.close()
        process.send_signal(signal.SIGTERM)
        status = process.wait(30)
    text = log.read_text()
    assert status in (0, -signal.SIGTERM), text[-3000:]  # uvicorn ends by the signal it stopped for
    assert "Application shutdown complete" in text and "Traceback" not in text, text[-3000:]


def _worker_said(api: ServiceStack, job_id: str, message: str) -> bool:
    lines = (api.folder / "worker.log").read_text().splitlines()
    return any(job_id in line and message in line for line in lines)


def _status(api: ServiceStack, job_id: str) -> str:
    return api.http.get(f"/jobs/{job_id}").json()["status"]


def _result_downloads(api: ServiceStack, job_id: str) -> bool:
    answer = api.http.get(f"/jobs/{job_id}/result", follow_redirects=True)
    return answer.status_code == 200 and answer.content[4:8] == b"ftyp"


def test_a_job_whose_inputs_cannot_be_fetched_waits_for_the_store(api, s3, media):
    job_id = _queued(api, media)
    with store_down(s3):
        api.start_worker()  # it takes the job while the store is away
        handed_back = lambda: _worker_said(api, job_id, "goes back to the queue")  # noqa: E731
        _wait(lambda: handed_back() or _status(api, job_id) == "failed", 60, "the job handed back")
        assert _status(api, job_id) in ("queued", "started")
    done = api.wait_finished(job_id, timeout=120)
    assert done["status"] == "succeeded", done
    assert _result_downloads(api, job_id)


def test_a_result_that_cannot_be_published_waits_for_the_store(api, s3, media):
    job_id = _queued(api, media, "long.mp4")
    api.wait_for(job_id, lambda job: job["progress"]["frames_done"] > 0, timeout=120)
    with store_down(s3):  # the render goes on; its result cannot be published
        said = lambda: _worker_said(api, job_id, "failed publishing the result")  # noqa: E731
        _wait(lambda: said() or _status(api, job_id) == "failed", 120, "the publish failing")
        assert _status(api, job_id) in ("queued", "started")
        time.sleep(OUTAGE)
    done = api.wait_finished(job_id, timeout=180)
    assert done["status"] == "succeeded" and done["progress"]["frames_done"] == 300, done
    assert _result_downloads(api, job_id)


def test_a_job_that_cannot_reach_the_store_by_its_deadline_fails_clearly(api, s3, media):
    job_id = _queued(api, media, "long.mp4")
    api.wait_for(job_id, lambda job: job["progress"]["frames_done"] > 0, timeout=120)
    with store_down(s3):
        done = api.wait_finished(job_id, timeout=STORE_DEADLINE + 60)
        assert done["status"] == "failed" and done["error"]["code"] == "storage_unavailable", done
        waited = done["finished_at"]
    assert waited is not None
    assert sorted(key.rsplit("/", 1)[1] for key in _objects(s3, job_id)) == ["driving.mp4", "source.png"]
