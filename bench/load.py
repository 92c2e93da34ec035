"""Load benchmark: many tiny jobs from many concurrent clients, on loopback, until every one ends.

    .venv/bin/python bench/load.py [--jobs 200] [--clients 20] [--workers 1] [--deadline 900]

A private redis-server, uvicorn and `--workers` worker processes run the real service on 127.0.0.1;
nothing else is contacted. `--clients` threads submit `--jobs` jobs between them (a 64 px PNG and a
half-second 64 px clip each), then every accepted job is polled until it is terminal. The run stops
by itself: when all jobs have ended, or at `--deadline` seconds, whichever comes first (then the jobs
still open are reported as such). Reported as JSON: POST /animate latency p50/p99 (the whole request,
upload included), answers by status, jobs by final status, jobs lost (accepted but neither ended nor
still known), and throughput in finished jobs per minute (first submission to last end). The model is
the small reference checkpoint from ../shared re-saved for 64 px frames, like the tests' model.
"""

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import imageio_ffmpeg
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stack import SMALL, BenchStack, resave_checkpoint  # noqa: E402

TERMINAL = {"succeeded", "failed", "canceled"}


def tiny_inputs(folder: Path) -> tuple[bytes, bytes]:
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[16:48, 16:48] = (220, 180, 150)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    clip = folder / "tiny.mp4"
    source = ["-f", "lavfi", "-i", "testsrc=size=64x64:rate=10", "-t", "0.5"]
    codec = ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run([ffmpeg, "-v", "error", "-y", *source, *codec, str(clip)], check=True)
    return buffer.getvalue(), clip.read_bytes()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run_load(url: str, source: bytes, driving: bytes, jobs: int, clients: int, deadline: float) -> dict:
    latencies: list[float] = []
    answers: Counter = Counter()
    accepted: list[str] = []
    lock = threading.Lock()
    per_client = [jobs // clients + (1 if i < jobs % clients else 0) for i in range(clients)]

    def client(count: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            for _ in range(count):
                if time.monotonic() > deadline:
                    return
                files = {"source": ("s.png", source), "driving": ("d.mp4", driving)}
                started = time.perf_counter()
                try:
                    response = http.post("/animate", files=files, data={"crop": "none"})
                except httpx.HTTPError as exc:
                    with lock:
                        answers[type(exc).__name__] += 1
                    continue
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    answers[str(response.status_code)] += 1
                    if response.status_code == 202:
                        accepted.append(response.json()["id"])

    first_submit = time.time()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, per_client))
    submitted_s = time.time() - first_submit

    final: dict[str, dict] = {}
    with httpx.Client(base_url=url, timeout=30) as http:
        while len(final) < len(accepted) and time.monotonic() < deadline:
            for job_id in accepted:
                if job_id in final:
                    continue
                response = http.get(f"/jobs/{job_id}")
                if response.status_code == 404:
                    final[job_id] = {"status": "lost"}
                elif response.status_code == 200 and response.json()["status"] in TERMINAL:
                    final[job_id] = response.json()
            time.sleep(0.5)

    statuses = Counter(job["status"] for job in final.values())
    ended = [j for j in final.values() if j.get("finished_at")]
    last_end = max(
        (datetime.fromisoformat(j["finished_at"]).timestamp() for j in ended), default=first_submit
    )
    span_minutes = max(last_end - first_submit, 1e-9) / 60
    queue_waits = [j["timings"]["queue_wait"] for j in ended if j["timings"].get("queue_wait") is not None]
    renders = [j["timings"]["render"] for j in ended if j["timings"].get("render") is not None]
    return {
        "submissions": sum(answers.values()),
        "answers": dict(answers),
        "accepted": len(accepted),
        "final_status": dict(statuses),
        "still_open_at_deadline": len(accepted) - len(final),
        "lost": statuses.get("lost", 0),
        "post_p50_ms": round(1000 * percentile(latencies, 50), 1) if latencies else None,
        "post_p99_ms": round(1000 * percentile(latencies, 99), 1) if latencies else None,
        "submitting_s": round(submitted_s, 1),
        "first_submit_to_last_end_s": round(span_minutes * 60, 1),
        "jobs_per_minute": round(statuses.get("succeeded", 0) / span_minutes, 1),
        "queue_wait_p50_s": round(statistics.median(queue_waits), 2) if queue_waits else None,
        "render_p50_s": round(statistics.median(renders), 2) if renders else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--deadline", type=float, default=900, help="seconds before the run stops anyway")
    args = parser.parse_args()
    if not SMALL.is_file():
        print(f"load: error: {SMALL} is absent: the benchmark's model comes from ../shared", file=sys.stderr)
        return 2
    deadline = time.monotonic() + args.deadline
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source, driving = tiny_inputs(folder)
        weights = resave_checkpoint(SMALL, folder / "weights" / "bench.pth.tar", 64)
        load_before = os.getloadavg()
        with BenchStack(folder, weights.parent, args.workers, MAX_QUEUED=1000, API_KEYS="") as service:
            report = run_load(service.url, source, driving, args.jobs, args.clients, deadline)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "jobs": args.jobs,
        "clients": args.clients,
        "workers": args.workers,
        "inputs": "64x64 PNG + 0.5 s 64 px H.264 clip at 10 fps (5 frames)",
        **report,
    }
    print(json.dumps(report, indent=2))
    return 0 if report["lost"] == 0 and report["still_open_at_deadline"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
