"""Service benchmark: a 10 s, 25 fps clip end to end through HTTP against the engine alone on the same
clip, and the POST /animate answer time (after the upload) with 20 concurrent clients on loopback.

    .venv/bin/python bench/service.py [--runs 5] [--checkpoint PATH] [--size 64]

The service is the real one: a private redis-server, one worker process (`python -m worker.run`)
and uvicorn. "Engine alone" is what the worker does for a job, in this process: load the image,
probe the video, render. "Through HTTP" is the client flow: upload, poll every 100 ms, download.
The two alternate, run by run, so both see the same load on the machine; on a shared machine
the medians, the minimums and the run-by-run pairs are all reported, and `outside_render` (the HTTP
time less the worker's own render time, in the same run) bounds what the service adds to a job:
upload, checks, queueing, the worker's input probing, polling and the download. For the POST timing the
worker is stopped, so the jobs only queue and the two cores serve the API. Inputs come from
../shared (read, never copied): d3.mp4 cut to 10 s at 25 fps, the d12.jpg portrait, and by default
the small reference checkpoint re-saved for 64 px frames, like the tests' model.
"""

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import imageio_ffmpeg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stack import SMALL, BenchStack, resave_checkpoint  # noqa: E402
from service.client import ProgressLine, submit_job  # noqa: E402

SHARED = ROOT.parent / "shared"
CLIP = SHARED / "media" / "clips" / "d3.mp4"
PORTRAIT = SHARED / "media" / "images" / "d12.jpg"
OPTIONS = {"crop": "none"}


class Silent(ProgressLine):
    def update(self, job: dict) -> None:
        return


def ffmpeg_cut(out: Path, *args: str) -> Path:
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    command = [
        ffmpeg,
        "-v",
        "error",
        "-y",
        "-i",
        str(CLIP),
        *args,
        "-c:v",
        "libx264",
        "-c:a",
        "aac",
        str(out),
    ]
    subprocess.run(command, check=True)
    return out


def engine_once(renderer, source: Path, clip: Path, out: Path) -> float:
    from engine.media.video_io import load_image, probe_video
    from engine.pipeline import RenderOptions, VideoPipeline

    started = time.perf_counter()
    image = load_image(source)
    info = probe_video(clip)
    VideoPipeline(renderer).render(image, clip, out, RenderOptions(crop="none"), info=info)
    return time.perf_counter() - started


def http_once(url: str, source: Path, clip: Path, out: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    job = submit_job(url, source, clip, out, OPTIONS, progress=Silent(), poll_interval=0.1)
    return time.perf_counter() - started, job


def multipart(source: Path, driving: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, path in (("source", source), ("driving", driving)):
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{path.name}"\r\n\r\n'
        )
        parts.append(head.encode() + path.read_bytes() + b"\r\n")
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="crop"\r\n\r\nnone\r\n'.encode())
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def post_answer_times(port: int, body: bytes, content_type: str, clients: int, each: int) -> list[float]:
    """Seconds from the last byte of each upload handed to the socket to the response's arrival."""
    times: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for _ in range(each):
            connection.request("POST", "/animate", body=body, headers={"Content-Type": content_type})
            sent = time.perf_counter()
            response = connection.getresponse()
            answered = time.perf_counter()
            response.read()
            with lock:
                times.append(answered - sent)
                if response.status != 202:
                    failures.append(str(response.status))
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"bench: {len(failures)} POSTs failed: {sorted(set(failures))}")
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each (after one warm-up)")
    parser.add_argument("--checkpoint", type=Path, help="default: the small reference checkpoint")
    parser.add_argument("--size", type=int, default=64, help="frame size the checkpoint is re-saved for")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--posts", type=int, default=10, help="POSTs per client")
    args = parser.parse_args()
    for needed in (CLIP, PORTRAIT, args.checkpoint or SMALL):
        if not needed.exists():
            raise SystemExit(f"bench: {needed} is absent: this benchmark reads ../shared")

    from engine import load_checkpoint
    from engine.animator import Animator

    load_before = os.getloadavg()  # others' work on a shared machine shows here
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clip = ffmpeg_cut(folder / "d3-10s-25fps.mp4", "-t", "10", "-vf", "fps=25")
        short = ffmpeg_cut(folder / "d3-2s.mp4", "-t", "2")
        weights = resave_checkpoint(args.checkpoint or SMALL, folder / "weights" / "bench.pth.tar", args.size)
        renderer = Animator(load_checkpoint(weights))
        with BenchStack(folder, weights.parent, MAX_QUEUED=100000, MAX_UPLOAD_MB=100) as service:
            engine_once(renderer, PORTRAIT, clip, folder / "engine.mp4")  # warm-up
            http_once(service.url, PORTRAIT, clip, folder / "http.mp4")
            engine, through_http, queue_wait, worker_render = [], [], [], []
            for _ in range(args.runs):
                engine.append(engine_once(renderer, PORTRAIT, clip, folder / "engine.mp4"))
                seconds, job = http_once(service.url, PORTRAIT, clip, folder / "http.mp4")
                through_http.append(seconds)
                queue_wait.append(job["timings"]["queue_wait"])
                worker_render.append(job["timings"]["render"])
            service.stop_render_workers()
            body, content_type = multipart(PORTRAIT, short)
            post_answer_times(service.port, body, content_type, 2, 2)  # warm-up
            answers = post_answer_times(service.port, body, content_type, args.clients, args.posts)

    engine_s, http_s = statistics.median(engine), statistics.median(through_http)
    outside = [h - r for h, r in zip(through_http, worker_render, strict=True)]
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU",
        "load_average_before": [round(x, 2) for x in load_before],
        "clip": "d3 cut to 10 s at 25 fps (250 frames, 512 px, AAC audio)",
        "model": f"{(args.checkpoint or SMALL).name} at {args.size} px",
        "engine_s": [round(x, 3) for x in engine],
        "http_s": [round(x, 3) for x in through_http],
        "engine_median_s": round(engine_s, 3),
        "http_median_s": round(http_s, 3),
        "overhead_percent_of_medians": round(100 * (http_s - engine_s) / engine_s, 1),
        "overhead_percent_of_minimums": round(100 * (min(through_http) - min(engine)) / min(engine), 1),
        "overhead_percent_median_of_pairs": round(
            statistics.median(100 * (h - e) / e for e, h in zip(engine, through_http, strict=True)), 1
        ),
        "worker_render_s": [round(x, 3) for x in worker_render],
        "outside_render_median_s": round(statistics.median(outside), 3),
        "outside_render_percent_median_of_pairs": round(
            statistics.median(100 * o / r for o, r in zip(outside, worker_render, strict=True)), 1
        ),
        "queue_wait_median_s": round(statistics.median(queue_wait), 3),
        "worker_render_median_s": round(statistics.median(worker_render), 3),
        "post_clients": args.clients,
        "post_requests": len(answers),
        "post_body_bytes": len(body),
        "post_answer_p50_ms": round(1000 * percentile(answers, 50), 1),
        "post_answer_p99_ms": round(1000 * percentile(answers, 99), 1),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
