"""Live benchmark: frames per second and send-to-receive latency of WebSocket /live on loopback.

    .venv/bin/python bench/live.py [--seconds 30] [--checkpoint PATH | --published-widths]
        [--runtime auto|torch|openvino] [--precision fp32|bf16|int8] [--target-fps 15] [--json OUT]

The service is the real one: a private redis-server, one live worker (`python -m worker.live`) and
uvicorn; the client is a WebSocket client in this process. Driving frames are d3.mp4 from ../shared
(read, never copied) at the model's resolution, JPEG quality 85, which is what the web page sends;
the source is the d12.jpg portrait. Latency is per answered frame: from just before the client sends
it to just after the client has its answer (matched by the `frame=<index>` comment in the JPEG).

Scenarios: one client at 25 and at 30 fps (paced by the clock, like a camera), one client in a closed
loop (the next frame is sent when the previous answer arrives: the most one session renders), and
two clients at 25 fps at once. The model is weights/starter.pth.tar when present, else the small
reference checkpoint re-saved for 64 px frames (the tests' model), or --checkpoint, or with
--published-widths random weights at the published vox-256 widths (bench/engine.py's model).

A session the live worker refuses (HTTP 503: it cannot serve one more at LIVE_TARGET_FPS, or all
LIVE_SESSIONS are open) is a result, reported with its reason. "dropped" is what the client sent
and never got back (stale frames skipped by the API's queue or the worker); the API's own count is
next to it.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stack import SMALL, BenchStack, resave_checkpoint  # noqa: E402
from contract import live_channel  # noqa: E402
from engine.hardware import describe_cpu  # noqa: E402

SHARED = ROOT.parent / "shared"
CLIP = SHARED / "media" / "clips" / "d3.mp4"
PORTRAIT = SHARED / "media" / "images" / "d12.jpg"
STARTER = ROOT / "weights" / "starter.pth.tar"
JPEG_QUALITY = 85


def prepare_checkpoint(folder: Path, path: Path | None, published_widths: bool = False) -> Path:
    """The checkpoint the live worker loads, as WEIGHTS_DIR/bench.pth.tar."""
    out = folder / "bench.pth.tar"
    if published_widths:
        from bench.engine import vox_model
        from engine import save_checkpoint

        save_checkpoint(out, vox_model())
        return out
    if path is not None or STARTER.is_file():
        out.symlink_to((path or STARTER).resolve())
        return out
    return resave_checkpoint(SMALL, out, 64)


def driving_frames(size: int, seconds: float) -> list[bytes]:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(CLIP), "-t", str(seconds)]
    command += ["-vf", f"scale={size}:{size}", "-f", "rawvideo", "-pix_fmt", "bgr24", "-"]
    raw = subprocess.run(command, capture_output=True, check=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, size, size, 3)
    return [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes() for f in frames]


@dataclass
class Run:
    sent: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, one per answered frame
    dropped: int = 0
    seconds: float = 0.0
    server_p95: list[float] = field(default_factory=list)  # the API's own p95 from each stats message
    refused: dict | None = None  # the handshake's answer when the session was not admitted
    closed: str | None = None  # why the server closed the session before the end, if it did

    def summary(self) -> dict:
        if self.refused is not None:
            return {"refused": self.refused}
        ms = sorted(x * 1000 for x in self.latencies)

        def pick(q: float) -> float:
            return round(ms[min(len(ms) - 1, int(len(ms) * q))], 1) if ms else float("nan")

        return {
            "sent": self.sent,
            "answered": len(ms),
            "dropped": self.sent - len(ms),
            "dropped_by_api_count": self.dropped,
            "fps_out": round(len(ms) / self.seconds, 2) if self.seconds > 0 else 0.0,
            "closed_early": self.closed,
            "latency_ms": {"p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99), "max": pick(1.0)},
            "api_p95_ms_median": round(statistics.median(self.server_p95), 1) if self.server_p95 else None,
        }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_frame(service: BenchStack, scenario) -> tuple[object, dict[str, float]]:
    """Run `scenario()`; also the CPU milliseconds each process spent per answered frame."""
    pids = {"live worker": service.workers[0].pid, "API": service.api.pid}
    pids["redis"] = service.redis.process.pid
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    client_before = sum(os.times()[:2])
    result = scenario()
    runs = result if isinstance(result, list) else [result]
    frames = max(sum(len(run.latencies) for run in runs), 1)  # a refused session answered none
    spent = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    spent["client"] = sum(os.times()[:2]) - client_before
    return result, {name: round(seconds * 1000 / frames, 2) for name, seconds in spent.items()}


def _index(answer: bytes) -> int:
    length = int.from_bytes(answer[4:6], "big")
    return int(answer[6 : 4 + length].decode().removeprefix("frame="))


def stream(url: str, source: bytes, frames: list[bytes], fps: float | None, seconds: float) -> Run:
    """One session: frames at `fps` by the clock (None: each sent when the previous one is answered)."""
    run = Run()
    sent_at: dict[int, float] = {}
    answered = threading.Event()
    try:
        ws = connect(url, max_size=None, open_timeout=30)
    except InvalidStatus as exc:
        response = exc.response
        try:
            error = json.loads(response.body)["error"]
        except (ValueError, KeyError, TypeError):
            error = {"code": None, "message": response.body.decode(errors="replace")}
        run.refused = {"status": response.status_code, "code": error["code"], "message": error["message"]}
        return run
    with ws:
        ws.send(source)
        while not (isinstance(m := ws.recv(timeout=30), str) and json.loads(m)["type"] == "ready"):
            continue
        done = threading.Event()

        def send() -> None:
            start = time.perf_counter()
            index = 0
            try:
                while (now := time.perf_counter()) - start < seconds:
                    if fps is not None:
                        time.sleep(max(0.0, start + index / fps - now))
                    elif index and not answered.wait(max(5.0, 3 * max(run.latencies, default=0.0))):
                        break  # no answer in a long while: the session is stuck
                    answered.clear()
                    sent_at[index] = time.perf_counter()
                    ws.send(frames[index % len(frames)])
                    index += 1
            except ConnectionClosed:
                pass  # the receiving side records why
            finally:
                run.sent = index
                done.set()

        sender = threading.Thread(target=send)
        started = time.perf_counter()
        sender.start()
        last_answer = started
        while not done.is_set() or time.perf_counter() - last_answer < drain_seconds(run):
            try:
                message = ws.recv(timeout=0.5)
            except TimeoutError:
                if done.is_set() and time.perf_counter() - last_answer >= drain_seconds(run):
                    break
                continue
            except ConnectionClosed as exc:
                run.closed = exc.rcvd.reason if exc.rcvd is not None else str(exc)
                break
            if isinstance(message, bytes):
                last_answer = time.perf_counter()
                run.latencies.append(last_answer - sent_at[_index(message)])
                answered.set()
            else:
                stats = json.loads(message)
                if stats["type"] == "stats":
                    run.dropped = stats["dropped"]
                    if stats["latency_ms"]["p95"] is not None:
                        run.server_p95.append(stats["latency_ms"]["p95"])
        sender.join()
        run.seconds = min(seconds, last_answer - started)
    return run


def drain_seconds(run: Run) -> float:
    """How long to wait for answers still in flight once sending stops: longer for a slow model."""
    return max(0.5, 1.5 * max(run.latencies, default=0.0))


def concurrent(url: str, source: bytes, frames: list[bytes], fps: float, seconds: float, clients: int):
    """`clients` sessions at once, each opened 1 s after the previous (admission sees the others open)."""
    runs: list[Run] = [Run() for _ in range(clients)]

    def one(i: int) -> None:
        runs[i] = stream(url, source, frames, fps, seconds)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
        time.sleep(1)
    for thread in threads:
        thread.join()
    return runs


def live_worker_presence(service: BenchStack) -> dict:
    """What the live worker publishes: precision, target frame rate, ms per frame, capacity."""
    from contract.queue import connect as redis_connect

    client = redis_connect(service.redis.url)
    names = list(client.scan_iter(match=live_channel.WORKER_PREFIX + "*"))
    return json.loads(client.get(names[0])) if names else {}


def checkpoint_label(args: argparse.Namespace) -> str:
    if args.published_widths:
        return "random weights at the published vox-256 widths"
    return str(args.checkpoint or (STARTER if STARTER.is_file() else "fomm-small at 64 px"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30, help="length of each scenario")
    parser.add_argument(
        "--checkpoint", type=Path, help="default: weights/starter.pth.tar, else the small one"
    )
    parser.add_argument(
        "--published-widths", action="store_true", help="random weights at the published vox-256 widths"
    )
    parser.add_argument("--target-fps", type=float, help="LIVE_TARGET_FPS for the live worker (default: 15)")
    parser.add_argument(
        "--runtime",
        choices=["auto", "torch", "openvino"],
        default="auto",
        help="RUNTIME for the live worker (auto: the faster at batch 1, measured at its start and cached "
        "in out/bench-model-cache, where OpenVINO's conversions are kept too)",
    )
    parser.add_argument(
        "--precision", choices=["fp32", "bf16", "int8"], help="PRECISION (default: the CPU's)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    for path in (CLIP, PORTRAIT, args.checkpoint or SMALL):
        if not path.is_file():
            print(f"bench: error: {path} is missing", file=sys.stderr)
            return 2

    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        folder = Path(tmp)
        (folder / "weights").mkdir()
        checkpoint = prepare_checkpoint(folder / "weights", args.checkpoint, args.published_widths)
        from engine import load_checkpoint

        size = load_checkpoint(checkpoint).frame_shape[0]
        frames = driving_frames(size, 4)
        source = PORTRAIT.read_bytes()
        settings = {"LIVE_SESSIONS": 2, "LOG_LEVEL": "WARNING", "RUNTIME": args.runtime}
        settings["MODEL_CACHE_DIR"] = ROOT / "out" / "bench-model-cache"
        if args.target_fps is not None:
            settings["LIVE_TARGET_FPS"] = args.target_fps
        if args.precision is not None:
            settings["PRECISION"] = args.precision
        stack = BenchStack(folder, folder / "weights", 0, live_worker=True, **settings)
        results = {}
        with stack as service:
            url = f"ws://127.0.0.1:{service.port}/live"
            worker = live_worker_presence(service)
            print("live worker", json.dumps(worker), flush=True)
            stream(url, source, frames, 25, 3)  # warm-up
            for name, fps in (("25 fps", 25), ("30 fps", 30), ("closed loop", None)):
                run, cpu = cpu_per_frame(service, lambda f=fps: stream(url, source, frames, f, args.seconds))
                results[name] = {**run.summary(), "cpu_ms_per_frame": cpu}
                print(name, json.dumps(results[name]), flush=True)
            pair, cpu = cpu_per_frame(service, lambda: concurrent(url, source, frames, 25, args.seconds, 2))
            results["2 clients at 25 fps"] = {
                "clients": [run.summary() for run in pair],
                "cpu_ms_per_frame": cpu,
            }
            print("2 clients at 25 fps", json.dumps(results["2 clients at 25 fps"]), flush=True)

    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{describe_cpu()}; load average {os.getloadavg()[0]:.1f} after, {load_before:.1f} before",
        "live_worker": worker,
        "checkpoint": checkpoint_label(args),
        "frame_size": size,
        "seconds": args.seconds,
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
