"""Media that lie about themselves (issue 26, classes 6, 7 and 8), against a real stack: Redis, a
worker process and uvicorn over HTTP, with real ffmpeg, PyAV and Pillow.

- Variable frame rate: the count the limits use and the frames rendered come from timestamps, and
  the result keeps the driving video's timing (its length is the audio's).
- Frame size: read from the codec's own parameter sets, not the container's or sample entry's claim.
- Image decoding cost: a progressive JPEG that repeats one scan is refused from its markers at once,
  and two tenants' checks cannot starve a third's upload.
"""

import secrets
import threading
import time
from pathlib import Path

import av
import httpx
import pytest

from service.auth import hash_key
from tests.hostile_media import (
    burst_mkv,
    gradient,
    h264_claiming,
    h264_growing,
    image_bytes,
    make_clip,
    scan_bomb,
    vfr_clip,
)
from tests.service_stack import ServiceStack

pytestmark = pytest.mark.slow
KEYS = {owner: secrets.token_urlsafe(32) for owner in ("mallory", "trent", "alice")}
MAX_FRAMES = 100
MAX_DRIVING_PIXELS = 100 * 100


@pytest.fixture(scope="module")
def stack(tmp_path_factory, small_checkpoint):
    with ServiceStack(
        tmp_path_factory.mktemp("media-truth"),
        small_checkpoint.parent,
        API_KEYS=",".join(f"{owner}:{hash_key(key)}" for owner, key in KEYS.items()),
        RATE_LIMIT="0",
        MAX_DRIVING_FRAMES=str(MAX_FRAMES),
        MAX_DRIVING_PIXELS=str(MAX_DRIVING_PIXELS),
        PROBE_TIMEOUT_SECONDS="10",
        BATCH_SIZE="8",
    ) as service:
        yield service


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    (folder / "source.png").write_bytes(image_bytes(gradient(64, 64), "PNG"))
    make_clip(folder / "clip.mp4", 1.0, 64, 10)
    return folder


def _post(
    stack: ServiceStack, owner: str, source: bytes, driving: Path, timeout: float = 60
) -> httpx.Response:
    files = {"source": ("s", source), "driving": ("d", driving.read_bytes())}
    headers = {"X-API-Key": KEYS[owner]}
    return stack.http.post("/animate", files=files, data={"crop": "none"}, headers=headers, timeout=timeout)


def _finished(stack: ServiceStack, job_id: str, owner: str) -> dict:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = stack.http.get(f"/jobs/{job_id}", headers={"X-API-Key": KEYS[owner]}).json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def _spans(path: Path) -> dict[str, tuple[int, float]]:
    """Per stream kind: (packets, seconds from the first packet's start to the last one's end)."""
    found: dict[str, list] = {}
    with av.open(str(path)) as container:
        for packet in container.demux():
            if packet.pts is None or packet.size == 0:
                continue
            start = float(packet.pts * packet.time_base)
            end = start + float((packet.duration or 0) * packet.time_base)
            count, first, last = found.get(packet.stream.type, [0, start, end])
            found[packet.stream.type] = [count + 1, min(first, start), max(last, end)]
    return {kind: (count, last - first) for kind, (count, first, last) in found.items()}


def _render(stack: ServiceStack, media: Path, driving: Path, tmp_path: Path) -> tuple[dict, dict, Path]:
    """The accepted job, its finished state and its result downloaded."""
    answer = _post(stack, "alice", (media / "source.png").read_bytes(), driving)
    assert answer.status_code == 202, answer.text
    done = _finished(stack, answer.json()["id"], "alice")
    assert done["status"] == "succeeded", done["error"]
    result = tmp_path / f"{driving.stem}-result.mp4"
    result.write_bytes(
        stack.http.get(f"/jobs/{done['id']}/result", headers={"X-API-Key": KEYS["alice"]}).content
    )
    return answer.json(), done, result


def test_a_variable_rate_clip_renders_at_its_real_timing(stack, media, tmp_path):
    """A phone-like clip (90 frames over 4.47 s, FFmpeg guessing 30 fps) was padded to 134 frames
    and 6.65 s against 4.46 s of audio."""
    accepted, done, result = _render(stack, media, vfr_clip(tmp_path / "phone.mp4"), tmp_path)
    driving = accepted["inputs"]["driving"]
    assert driving["frames"] == 90 and driving["fps"] == pytest.approx(90 / 4.4667, rel=1e-3)
    assert done["result"]["frames"] == 90
    spans = _spans(result)
    frame = 1 / driving["fps"]
    assert spans["video"][0] == 90
    assert spans["video"][1] == pytest.approx(spans["audio"][1], abs=frame), spans


def test_a_clip_counted_as_80_frames_renders_80(stack, media, tmp_path):
    """79 frames a millisecond apart and one at 4.84 s: FFmpeg guesses 1000 fps, which rendered
    4,841 frames; the frames counted against MAX_DRIVING_FRAMES are the ones rendered."""
    accepted, done, result = _render(stack, media, burst_mkv(tmp_path / "burst.mkv"), tmp_path)
    assert accepted["inputs"]["driving"]["frames"] == 80
    assert done["result"]["frames"] == 80 <= MAX_FRAMES
    count, seconds = _spans(result)["video"]
    assert count == 80 and seconds == pytest.approx(4.84, abs=0.1)


def test_the_frame_size_is_the_streams_own(stack, media, tmp_path):
    """The container and the sample entry say 64x64; the stream's parameter sets say 4096x4096."""
    source = (media / "source.png").read_bytes()
    answer = _post(stack, "alice", source, h264_claiming(tmp_path / "claiming.mp4", real=4096))
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["field"]) == ("video_too_large", "driving") and "4096x4096" in error[
        "message"
    ]


def test_a_frame_larger_than_the_first_is_not_decoded_by_the_worker(stack, media, tmp_path):
    """The API decodes only the first frame (64x64); the second brings 1024x1024 parameter sets:
    the worker's decoder refuses it rather than decode past MAX_DRIVING_PIXELS."""
    answer = _post(stack, "alice", (media / "source.png").read_bytes(), h264_growing(tmp_path / "grow.mp4"))
    assert answer.status_code == 202, answer.text
    done = _finished(stack, answer.json()["id"], "alice")
    assert done["status"] == "failed" and done["error"]["code"] == "video_decode_error", done
    assert "1024x1024" in done["error"]["message"]


def test_a_progressive_jpeg_repeating_a_scan_is_refused_at_once_and_starves_no_one(stack, media):
    """A 1 MB progressive JPEG repeating one scan 80,000 times took 37 s to check; two at once made
    another tenant's upload wait and get 503 server_busy."""
    bomb = scan_bomb(4000, 4000, 1_000_000)
    clip = media / "clip.mp4"
    answers: dict[str, list] = {"mallory": [], "trent": []}

    def attack(owner: str) -> None:
        started = time.monotonic()
        try:
            answers[owner].append((_post(stack, owner, bomb, clip, timeout=20), time.monotonic() - started))
        except httpx.TimeoutException:
            answers[owner].append((None, time.monotonic() - started))

    attackers = [threading.Thread(target=attack, args=(owner,)) for owner in answers for _ in range(2)]
    for thread in attackers:
        thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    honest = _post(stack, "alice", (media / "source.png").read_bytes(), clip, timeout=30)
    honest_seconds = time.monotonic() - started
    for thread in attackers:
        thread.join()
    assert honest.status_code == 202, honest.text
    assert honest_seconds < 5, f"another tenant's upload waited {honest_seconds:.1f} s"
    for owner, results in answers.items():
        for answer, seconds in results:
            assert answer is not None, f"{owner}'s bomb was still being checked after {seconds:.0f} s"
            assert answer.status_code == 400 and answer.json()["error"]["code"] == "image_too_large", (
                answer.text
            )
            assert "scans" in answer.json()["error"]["message"] and seconds < 5
    stack.http.delete(f"/jobs/{honest.json()['id']}", headers={"X-API-Key": KEYS["alice"]})
