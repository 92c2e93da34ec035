"""Faults, for real: workers killed with SIGKILL, a render over its time limit, a disk that refuses
the result, a video that breaks mid-stream, Redis restarted under queued jobs, a full queue.

Heartbeats and maintenance passes are set to a second here (a minute in production), so a lost
job is found within seconds. Each test gets the stack as started (Redis, the API, one worker, no job
waiting or running): the one before it is reused when it is in that state, else replaced, so a
test that fails midway cannot fail the ones after it.
"""

import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.media.video_io import probe_video
from tests.hostile_media import gradient, image_bytes, make_clip
from tests.service_stack import ROOT, ReusedStack, ServiceStack, cut_clip

pytestmark = pytest.mark.slow
FULL_FRAME = {"crop": "none"}
RESULT_LIMIT_BYTES = 2048  # what the "full disk" lets a worker write: less than the result


@pytest.fixture(scope="module")
def stacks(tmp_path_factory, small_checkpoint):
    def make() -> ServiceStack:
        return ServiceStack(
            tmp_path_factory.mktemp("faults"),
            small_checkpoint.parent,
            BATCH_SIZE="2",
            HEARTBEAT_INTERVAL="1",
            MAINTENANCE_INTERVAL="1",
            JOB_RETRIES="1",
            MAX_QUEUED="2",
        )

    reused = ReusedStack(make)
    yield reused
    reused.close()


@pytest.fixture
def stack(stacks) -> ServiceStack:
    """The service as started: Redis, the API, one worker, no job waiting or running."""
    return stacks.ready()


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    (folder / "source.png").write_bytes(image_bytes(gradient(64, 64), "PNG"))
    make_clip(folder / "short.mp4", 1.0, 64, 10)
    make_clip(folder / "medium.mp4", 10.0, 64, 10)  # 100 frames: several heartbeat TTLs of rendering
    make_clip(folder / "long.mp4", 20.0, 64, 25)  # 500 frames: long enough to be caught mid-render
    # 2,400 frames: the 500 of long.mp4 rendered in under 3 s on an idle machine; these cannot
    # finish within the timeout test's 3 s limit
    make_clip(folder / "longest.mp4", 40.0, 64, 60)
    return folder


def _submit(stack: ServiceStack, media: Path, clip: str | Path) -> dict:
    driving = clip if isinstance(clip, Path) else media / clip
    response = stack.post(media / "source.png", driving, **FULL_FRAME)
    assert response.status_code == 202, response.text
    return response.json()


def _rendering(job: dict) -> bool:
    return job["status"] == "started" and job["progress"]["frames_done"] > 0


def _files(stack: ServiceStack, job_id: str) -> list[str]:
    return sorted(p.name for p in (stack.data_dir / "jobs" / job_id).iterdir())


def _kill_worker(stack: ServiceStack) -> None:
    stack.worker.send_signal(signal.SIGKILL)
    stack.worker.wait()
    stack.worker = None


def test_a_render_longer_than_the_heartbeat_ttl_is_not_taken_for_lost(stack, media):
    """On 2 cores these 100 frames take several times the 3 s heartbeat TTL."""
    job = _submit(stack, media, "medium.mp4")
    done = stack.wait_finished(job["id"])
    assert done["status"] == "succeeded" and done["progress"]["frames_done"] == 100, done
    logs = (stack.folder / "api.log").read_text() + (stack.folder / "worker.log").read_text()
    lost = [line for line in logs.splitlines() if job["id"] in line and "lost" in line]
    assert lost == []


def test_a_worker_killed_mid_job_is_retried_then_the_job_fails_worker_lost(stack, media):
    job = _submit(stack, media, "long.mp4")
    stack.wait_for(job["id"], _rendering)
    _kill_worker(stack)  # the first attempt dies; JOB_RETRIES=1: it is queued again
    requeued = stack.wait_for(job["id"], lambda j: j["status"] != "started", timeout=60)
    assert requeued["status"] == "queued" and requeued["error"] is None, requeued
    assert _files(stack, job["id"]) == ["driving.mp4", "source.png"]  # the dead attempt's partial is gone
    stack.start_worker()
    stack.wait_for(job["id"], _rendering)
    _kill_worker(stack)  # the last attempt dies too: no worker is needed to notice, the API does
    lost = stack.wait_finished(job["id"], timeout=60)
    assert lost["status"] == "failed" and lost["error"]["code"] == "worker_lost", lost
    assert _files(stack, job["id"]) == ["driving.mp4", "source.png"]  # no partial MP4 of either attempt
    refused = stack.http.get(f"/jobs/{job['id']}/result")
    assert refused.status_code == 409
    stack.start_worker()


def test_a_render_over_its_time_limit_fails_with_timeout(stack, media):
    api_env = stack.env
    stack.api.terminate()
    stack.api.wait()
    stack.env = {**api_env, "JOB_TIMEOUT": "3"}  # read by the API: each job carries its limit
    try:
        stack.start_api()
        job = _submit(stack, media, "longest.mp4")
        done = stack.wait_finished(job["id"])
        assert done["status"] == "failed" and done["error"]["code"] == "timeout", done
        assert done["progress"]["frames_done"] < 2400
        assert _files(stack, job["id"]) == ["driving.mp4", "source.png"]
    finally:
        stack.api.terminate()
        stack.api.wait()
        stack.env = api_env
        stack.start_api()


def test_a_disk_that_refuses_the_result_fails_the_job_with_storage_error(stack, media):
    assert stack.stop_worker() == 0

    def small_files() -> None:  # the kernel refuses writes past this size to this worker and its ffmpeg
        resource.setrlimit(resource.RLIMIT_FSIZE, (RESULT_LIMIT_BYTES, RESULT_LIMIT_BYTES))

    limited = subprocess.Popen(
        [sys.executable, "-m", "worker.run"],
        env=stack.env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=small_files,
    )
    try:
        job = _submit(stack, media, "short.mp4")
        done = stack.wait_finished(job["id"])
        assert done["status"] == "failed" and done["error"]["code"] == "storage_error", done
        assert _files(stack, job["id"]) == ["driving.mp4", "source.png"]  # nothing half-written
    finally:
        limited.terminate()
        limited.wait(30)
    stack.start_worker()


def test_a_video_that_breaks_mid_stream_fails_the_job_with_video_decode_error(stack, media, tmp_path):
    whole = cut_clip(media / "long.mp4", tmp_path / "whole.mp4", "-t", "4", "-movflags", "+faststart")
    broken = tmp_path / "broken.mp4"
    data = whole.read_bytes()
    broken.write_bytes(data[: len(data) * 6 // 10])  # the header promises 100 frames; the data stops early
    job = _submit(stack, media, broken)
    assert 0 < job["inputs"]["driving"]["frames"] < 100  # the packets counted, not the header's promise
    done = stack.wait_finished(job["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "video_decode_error", done
    assert _files(stack, job["id"]) == ["driving.mp4", "source.png"]


def test_queued_jobs_survive_a_redis_restart_and_a_full_queue_answers_429(stack, media):
    assert stack.stop_worker() == 0
    waiting = [_submit(stack, media, "short.mp4") for _ in range(2)]
    full = stack.post(media / "source.png", media / "short.mp4", **FULL_FRAME)
    assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full"
    assert int(full.headers["retry-after"]) > 0

    stack.redis.stop()
    assert stack.http.get(f"/jobs/{waiting[0]['id']}").status_code == 503
    stack.redis.start()  # the same append-only file
    for job in waiting:
        assert stack.http.get(f"/jobs/{job['id']}").json()["status"] == "queued"
    stack.start_worker()
    expected = probe_video(media / "short.mp4").frames
    for job in waiting:
        done = stack.wait_finished(job["id"])
        assert done["status"] == "succeeded" and done["progress"]["frames_done"] == expected, done
