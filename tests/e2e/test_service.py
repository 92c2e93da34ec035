"""The service end to end: a real Redis, a real worker process, uvicorn over HTTP, real clips."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from contract.queue import JobQueue, connect
from contract.storage.local import LocalStore
from engine.hardware import default_precision
from engine.media.video_io import probe_video
from service.cleanup import sweep
from tests.service_stack import ROOT, ReusedStack, ServiceStack, clean_env, cut_clip

pytestmark = pytest.mark.slow
UPLOAD_LIMIT_MB = 2
FULL_FRAME = {"crop": "none"}  # no subject search: these tests are about the service


@pytest.fixture(scope="module")
def stacks(tmp_path_factory, small_checkpoint):
    def make() -> ServiceStack:
        return ServiceStack(
            tmp_path_factory.mktemp("service"),
            small_checkpoint.parent,
            MAX_UPLOAD_MB=str(UPLOAD_LIMIT_MB),
            BATCH_SIZE="2",
        )

    reused = ReusedStack(make)
    yield reused
    reused.close()


@pytest.fixture
def stack(stacks) -> ServiceStack:
    """The service as started (Redis, the API, one worker, nothing running): one test's failure
    cannot leave the next without a worker."""
    return stacks.ready()


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory, clip) -> Path:
    """2 s of d3 (512 px, 30 fps, AAC audio)."""
    return cut_clip(clip, tmp_path_factory.mktemp("clips") / "d3-2s.mp4", "-t", "2")


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory, clip) -> Path:
    """d3 twice (23.6 s) at 128 px and a constant 30 fps: a render that lasts seconds with the small model."""
    return cut_clip(
        clip, tmp_path_factory.mktemp("clips") / "d3x2-128.mp4", "-vf", "scale=128:128,fps=30", loops=1
    )


def _job_folders(stack: ServiceStack) -> set[str]:
    root = stack.data_dir / "jobs"
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def _submit(stack, portrait, driving, **fields) -> dict:
    response = stack.post(portrait, driving, **{**FULL_FRAME, **fields})
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/jobs/{response.json()['id']}"
    return response.json()


def _started(job: dict) -> bool:
    return job["status"] == "started" and job["progress"]["frames_done"] > 0


def test_submit_poll_download(stack, portrait, short_clip, tmp_path):
    expected = probe_video(short_clip)
    job = _submit(stack, portrait, short_clip, mode="relative", audio="true", paste_back="false")
    assert job["status"] == "queued"
    assert job["progress"]["stage"] == "queued" and job["progress"]["percent"] == 0.0
    assert job["inputs"]["driving"]["fps"] == 30
    assert job["inputs"]["options"]["crop"] == "none" and job["inputs"]["options"]["paste_back"] is False

    done = stack.wait_finished(job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"] == {
        "stage": None,
        "frames_done": expected.frames,
        "frames_total": expected.frames,
        "percent": 100.0,
        "eta_seconds": None,
    }
    assert done["result_url"] == f"/jobs/{job['id']}/result"
    assert done["inputs"]["model"] == "small"
    assert all(
        done["timings"][k] is not None for k in ("queue_wait", "decode", "inference", "encode", "render")
    )
    assert done["timings"]["precision"] == default_precision("cpu")  # the worker's default, this CPU's
    assert done["result"]["framing"] == {
        "source": "whole",
        "driving": "whole",
        "subject_found": None,
        "reason": "crop none: the whole photo; the whole driving frames",
        "warning": None,
    }
    assert done["started_at"] and done["finished_at"] and done["finished_at"] >= done["started_at"]

    response = stack.http.get(done["result_url"])
    assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
    out = tmp_path / "result.mp4"
    out.write_bytes(response.content)
    info = probe_video(out)
    assert (info.frames, info.fps, info.has_audio) == (expected.frames, 30.0, True)
    assert (info.width, info.height) == (64, 64)

    ranged = stack.http.get(done["result_url"], headers={"Range": "bytes=100-199"})
    assert ranged.status_code == 206
    assert ranged.headers["content-range"] == f"bytes 100-199/{len(response.content)}"
    assert ranged.content == response.content[100:200]


def test_two_jobs_at_once(stack, portrait, short_clip, tmp_path):
    answers = []
    threads = [
        threading.Thread(target=lambda: answers.append(stack.post(portrait, short_clip, **FULL_FRAME)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [202, 202]
    ids = {a.json()["id"] for a in answers}
    assert len(ids) == 2
    for job_id in ids:
        assert stack.wait_finished(job_id)["status"] == "succeeded"
        path = tmp_path / f"{job_id}.mp4"
        path.write_bytes(stack.http.get(f"/jobs/{job_id}/result").content)
        assert probe_video(path).frames == probe_video(short_clip).frames


def test_webm_driving_is_accepted(stack, portrait, short_clip, tmp_path):
    webm = cut_clip(
        short_clip, tmp_path / "d3.webm", "-t", "1", "-c:v", "libvpx-vp9", "-b:v", "300k", "-c:a", "libopus"
    )
    job = _submit(stack, portrait, webm)
    assert job["inputs"]["driving"]["format"] == "webm" and job["inputs"]["driving"]["audio"] is True
    assert stack.wait_finished(job["id"])["status"] == "succeeded"


def test_unknown_job_is_404(stack):
    for path in (f"/jobs/{uuid.uuid4()}", f"/jobs/{uuid.uuid4()}/result", "/jobs/..%2F..%2Fetc", "/jobs/ABC"):
        response = stack.http.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] in ("job_not_found", "not_found")
    assert stack.http.delete(f"/jobs/{uuid.uuid4()}").status_code == 404
    assert stack.http.get("/nowhere").json()["error"]["code"] == "not_found"


def test_bad_submissions_are_refused_and_leave_nothing(stack, portrait, short_clip, tmp_path):
    before = _job_folders(stack)
    text = tmp_path / "notes.png"
    text.write_text("not an image")

    def refused(response, status, code):
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code

    refused(stack.post(text, short_clip), 415, "unsupported_media_type")
    refused(stack.post(portrait, portrait), 415, "unsupported_media_type")
    refused(stack.post(portrait, short_clip, mode="sideways"), 422, "invalid_field")
    refused(stack.post(portrait, short_clip, driving_start="-1"), 422, "invalid_field")
    refused(stack.post(portrait, short_clip, crop="../x"), 422, "invalid_field")
    refused(stack.post(portrait, short_clip, model="nonexistent"), 422, "unknown_model")
    refused(stack.post(portrait, short_clip, colour="blue"), 422, "unknown_field")
    with portrait.open("rb") as image:
        refused(stack.http.post("/animate", files={"source": image}), 422, "missing_field")
    refused(stack.http.post("/animate", json={"source": "x"}), 415, "unsupported_media_type")
    truncated = b'--b\r\nContent-Disposition: form-data; name="mode"\r\n\r\nrelative\r\n--b\r\nContent-Disp'
    headers = {"content-type": "multipart/form-data; boundary=b"}
    refused(stack.http.post("/animate", content=truncated, headers=headers), 400, "bad_request")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(short_clip.read_bytes()[:4096])
    refused(stack.post(portrait, broken), 400, "invalid_video")
    assert _job_folders(stack) == before


def _raw_request(port: int, head: bytes, body_chunks: list[bytes]) -> bytes:
    """Send a request, possibly without its whole body, and read the answer the server gives anyway."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        for chunk in body_chunks:
            sock.sendall(chunk)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer


def test_upload_limit_is_enforced_while_streaming(stack):
    before = _job_folders(stack)
    limit = UPLOAD_LIMIT_MB * 1024 * 1024
    declared = (
        b"POST /animate HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        + f"Content-Length: {limit + 1}\r\n\r\n".encode()
    )
    answer = _raw_request(stack.port, declared, [])  # not one byte of the body is sent
    assert answer.startswith(b"HTTP/1.1 413") and b'"payload_too_large"' in answer

    streamed = (
        b"POST /animate HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    part = b'--b\r\nContent-Disposition: form-data; name="driving"; filename="v.mp4"\r\n\r\n'
    block = b"\0" * (256 * 1024)
    chunks = [b"%x\r\n%s\r\n" % (len(part), part)]
    chunks += [b"%x\r\n%s\r\n" % (len(block), block)] * (limit // len(block) + 1)
    answer = _raw_request(stack.port, streamed, chunks)  # the body never ends: no closing chunk
    assert answer.startswith(b"HTTP/1.1 413") and b'"payload_too_large"' in answer
    assert _job_folders(stack) == before


def test_queue_survives_worker_restart_and_cancel_while_queued(stack, portrait, short_clip):
    assert stack.stop_worker() == 0
    waiting = _submit(stack, portrait, short_clip)
    dropped = _submit(stack, portrait, short_clip)
    assert stack.http.get(f"/jobs/{waiting['id']}").json()["status"] == "queued"
    early = stack.http.get(f"/jobs/{waiting['id']}/result")
    assert early.status_code == 409 and early.json()["error"]["code"] == "result_not_ready"
    assert stack.http.get("/readyz").json()["error"]["code"] == "no_worker"

    canceled = stack.http.delete(f"/jobs/{dropped['id']}")
    assert canceled.status_code == 202 and canceled.json()["status"] == "canceled"
    assert canceled.json()["finished_at"] is not None

    stack.start_worker()
    assert stack.wait_finished(waiting["id"])["status"] == "succeeded"
    dropped_now = stack.http.get(f"/jobs/{dropped['id']}").json()
    assert dropped_now["status"] == "canceled" and dropped_now["started_at"] is None
    assert stack.http.get(f"/jobs/{dropped['id']}/result").status_code == 409
    assert stack.http.get("/readyz").status_code == 200


def test_progress_names_its_stage(stack, portrait, long_clip):
    job = _submit(stack, portrait, long_clip, crop="auto")
    seen = []

    def note(job: dict) -> bool:
        if job["status"] == "started":
            progress = job["progress"]
            seen.append((progress["stage"], progress["percent"], progress["eta_seconds"], job["eta_seconds"]))
        return job["status"] in ("succeeded", "failed", "canceled")

    assert stack.wait_for(job["id"], note)["status"] == "succeeded"
    order = ("analysing", "rendering", "encoding")
    stages = [stage for stage, *_ in seen if stage is not None]
    assert "rendering" in stages, seen
    assert stages == sorted(stages, key=order.index), seen  # the stages in their order, never back
    percents = [percent for _, percent, *_ in seen]
    assert percents == sorted(percents) and all(0 <= p <= 100 for p in percents), seen  # never backwards
    assert all(eta == top for *_, eta, top in seen), seen


def test_cancel_running_job(stack, portrait, long_clip):
    job = _submit(stack, portrait, long_clip)
    running = stack.wait_for(job["id"], _started)
    assert running["progress"]["frames_done"] < running["progress"]["frames_total"]
    answer = stack.http.delete(f"/jobs/{job['id']}")
    assert answer.status_code == 202
    done = stack.wait_finished(job["id"])
    assert done["status"] == "canceled", done
    assert done["progress"]["frames_done"] < done["progress"]["frames_total"]
    folder = stack.data_dir / "jobs" / job["id"]
    assert sorted(p.name for p in folder.iterdir()) == ["driving.mp4", "source.jpeg"]  # no partial MP4
    refused = stack.http.get(f"/jobs/{job['id']}/result")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "result_unavailable"
    assert stack.http.delete(f"/jobs/{job['id']}").status_code == 204  # a finished job is deleted
    assert not folder.exists() and stack.http.get(f"/jobs/{job['id']}").status_code == 404


def test_stopping_worker_hands_its_job_back(stack, portrait, long_clip):
    """With a stop grace shorter than the job (tests/e2e/test_worker_shutdown.py has both cases)."""
    assert stack.stop_worker() == 0
    stack.start_worker(WORKER_STOP_GRACE="4")
    job = _submit(stack, portrait, long_clip)
    stack.wait_for(job["id"], _started)
    assert stack.stop_worker() == 0
    back = stack.http.get(f"/jobs/{job['id']}").json()
    assert back["status"] == "queued" and back["progress"]["frames_done"] == 0 and back["error"] is None
    stack.start_worker()
    done = stack.wait_finished(job["id"])
    assert done["status"] == "succeeded" and done["progress"]["frames_done"] == probe_video(long_clip).frames


def test_redis_outage_answers_503_then_recovers(stack, portrait, short_clip):
    known = _submit(stack, portrait, short_clip)
    assert stack.wait_finished(known["id"])["status"] == "succeeded"
    before = _job_folders(stack)
    stack.redis.stop()
    try:
        for response in (
            stack.http.get(f"/jobs/{known['id']}"),
            stack.http.get("/readyz"),
            stack.http.get("/models"),
            stack.post(portrait, short_clip),
        ):
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "queue_unavailable"
            assert response.headers["retry-after"]
        assert stack.http.get("/healthz").status_code == 200
        assert _job_folders(stack) == before
    finally:
        stack.redis.start()
    assert stack.http.get(f"/jobs/{known['id']}").json()["status"] == "succeeded"  # kept by the AOF
    after = _submit(stack, portrait, short_clip)
    assert stack.wait_finished(after["id"])["status"] == "succeeded"


PUBLISHED_BEFORE_CAPABILITIES = (
    "name",
    "frame_size",
    "num_kp",
    "family",
    "modes",
    "background_motion",
    "device",
    "workers",
)


def test_models_health_and_docs(stack):
    models = stack.http.get("/models").json()
    assert models["default"] == "small"
    assert [{key: model[key] for key in PUBLISHED_BEFORE_CAPABILITIES} for model in models["models"]] == [
        {
            "name": "small",
            "frame_size": [64, 64],
            "num_kp": 10,
            "family": "fomm",
            "modes": ["relative", "absolute"],
            "background_motion": False,
            "device": "cpu",
            "workers": 1,
        }
    ]
    capabilities = models["models"][0]
    assert capabilities["options"] == ["adapt_scale"] and capabilities["runtime"] == "torch"
    assert capabilities["title"] == "First Order Motion Model" and capabilities["precision"] in (
        "fp32",
        "bf16",
    )
    assert stack.http.get("/healthz").json() == {"status": "ok"}
    ready = stack.http.get("/readyz").json()
    assert ready["status"] == "ready" and ready["workers"] == 1
    assert "swagger" in stack.http.get("/docs").text.lower()
    spec = stack.http.get("/openapi.json").json()
    form = spec["paths"]["/animate"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"source", "driving"} <= set(form["required"])
    assert {"202", "413", "415", "422", "503"} <= set(spec["paths"]["/animate"]["post"]["responses"])


def test_expired_jobs_are_swept(stack, portrait, short_clip):
    job = _submit(stack, portrait, short_clip)
    assert stack.wait_finished(job["id"])["status"] == "succeeded"
    store = LocalStore(stack.data_dir)
    orphan_old = store.folder(str(uuid.uuid4()))
    orphan_new = store.folder(str(uuid.uuid4()))
    for folder in (orphan_old, orphan_new):
        folder.mkdir()
        (folder / "source.upload").write_bytes(b"x")
    old = time.time() - 2 * 24 * 3600
    for path in (orphan_old / "source.upload", orphan_old):
        os.utime(path, (old, old))
    queue = JobQueue(connect(stack.redis.url), job_timeout=60, result_ttl=3600)

    removed = sweep(store, queue, ttl=3600)
    assert orphan_old.name in removed  # an abandoned upload
    assert job["id"] not in removed and orphan_new.name not in removed  # finished just now; upload in flight
    assert stack.http.get(f"/jobs/{job['id']}").status_code == 200

    removed = sweep(store, queue, ttl=3600, now=datetime.now(UTC) + timedelta(hours=2))
    assert job["id"] in removed and not store.folder(job["id"]).exists()
    assert stack.http.get(f"/jobs/{job['id']}").status_code == 404


def test_animate_submit_command(stack, portrait, short_clip, tmp_path):
    animate = [sys.executable, "-m", "cli.main", "submit", "--server", stack.url]
    out = tmp_path / "cli.mp4"
    inputs = ["--source", str(portrait), "--driving", str(short_clip), "--crop", "none", "--no-audio"]
    done = subprocess.run([*animate, *inputs, "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stderr
    info = probe_video(out)
    assert info.frames == probe_video(short_clip).frames and not info.has_audio

    bad = subprocess.run(
        [
            *animate,
            "--source",
            str(short_clip),
            "--driving",
            str(short_clip),
            "--out",
            str(tmp_path / "x.mp4"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and bad.stderr.startswith("animate: error:")
    assert "unsupported_media_type" in bad.stderr and not (tmp_path / "x.mp4").exists()


def test_service_never_imports_torch():
    modules = "service.app, service.client, service.launcher, service.demo"
    probe = f"import sys, {modules}; print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=clean_env()
    )
    assert done.stdout.strip() == "False", done.stderr


def test_job_payload_is_plain_json(stack, portrait, short_clip):
    """RQ's JSON serializer, not pickle: a payload in Redis cannot make a worker run code."""
    job = _submit(stack, portrait, short_clip)
    payload = json.loads(zlib.decompress(stack.redis_client().hget(f"rq:job:{job['id']}", "data")))
    assert payload[2] == [job["id"], {"model": "small", "options": job["inputs"]["options"]}]
    stack.wait_finished(job["id"])


def test_a_client_generated_from_the_openapi_document_runs_a_job(stack, portrait, short_clip, tmp_path):
    """openapi-python-client, a third-party generator, builds a client from /openapi.json as it is;
    the client submits, polls and downloads the bytes."""
    spec = tmp_path / "openapi.json"
    spec.write_text(stack.http.get("/openapi.json").text)
    generator = Path(sys.executable).with_name("openapi-python-client")
    env = {**os.environ, "PATH": f"{generator.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [str(generator), "generate", "--path", str(spec), "--meta", "none"]
    done = subprocess.run(
        [*command, "--output-path", str(tmp_path / "animate_client")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Cannot parse" not in done.stdout + done.stderr and "Unsupported" not in done.stdout + done.stderr

    sys.path.insert(0, str(tmp_path))
    try:
        from animate_client import Client
        from animate_client.api.default import animate, get_job, get_result
        from animate_client.models import AnimateAnimateForm, ErrorBody, JobResource
        from animate_client.types import File
    finally:
        sys.path.remove(str(tmp_path))

    client = Client(base_url=stack.url, timeout=None)
    with portrait.open("rb") as image, short_clip.open("rb") as video:
        form = AnimateAnimateForm(
            source=File(payload=image, file_name="photo.jpg", mime_type="image/jpeg"),
            driving=File(payload=video, file_name="talk.mp4", mime_type="video/mp4"),
            crop="none",
        )
        queued = animate.sync(client=client, body=form)
    assert isinstance(queued, JobResource), queued
    deadline = time.monotonic() + 300
    job = queued
    while str(job.status) not in ("succeeded", "failed", "canceled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        job = get_job.sync(client=client, job_id=queued.id)
    assert str(job.status) == "succeeded", job
    assert job.result.frames == probe_video(short_clip).frames

    downloaded = get_result.sync(client=client, job_id=queued.id)
    video_bytes = downloaded.payload.read()
    assert video_bytes[4:8] == b"ftyp" and len(video_bytes) > 1000

    missing = get_job.sync_detailed(client=client, job_id=str(uuid.uuid4()))
    assert missing.status_code == 404 and isinstance(missing.parsed, ErrorBody)
    assert missing.parsed.error.code == "job_not_found"
