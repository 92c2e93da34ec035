"""What describing an uploaded video costs the API: wall time and peak memory of one probe.

Compared, interleaved in one run: the probe the API uses (PyAV in a forked, limited child,
service/probe.py), the same read in the calling process, and `ffmpeg -i` as the API ran it before
(a decoding description, read from its text). Clips: a 2 s 512x512 H.264 clip (ffmpeg's test
pattern) and an MKV of two PNG-coded 6000x6000 frames (the memory attack, scaled down).

    .venv/bin/python bench/probe.py [--runs 10]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Only the standard library at the top: each forked probe imports this main module again, as it
# would import `service.__main__` (nothing) under `python -m service`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _ffmpeg_describe(path: Path, demuxer: str) -> None:
    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-f", demuxer, "-i", str(path)]
    subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    from contract.container import read_container
    from service.probe import Prober
    from tests.hostile_media import make_clip, png_coded_mkv

    folder = Path(tempfile.mkdtemp(prefix="bench-probe-"))
    clips = {
        "h264 512px 2 s": (make_clip(folder / "clip.mp4", 2.0, 512, 25), "mov"),
        "png 6000px mkv": (png_coded_mkv(folder / "bomb.mkv", 6000), "matroska"),
    }
    prober = Prober(30, 256)
    prober.warm_up()
    ways = {
        "forked child (API)": lambda path, demuxer: prober.read(path, demuxer, 100_000),
        "in process": lambda path, demuxer: read_container(path, demuxer, 100_000),
        "ffmpeg -i (before)": _ffmpeg_describe,
    }
    for clip, (path, demuxer) in clips.items():
        seconds: dict[str, list[float]] = {way: [] for way in ways}
        for _ in range(args.runs):
            for way, run in ways.items():
                began = time.perf_counter()
                run(path, demuxer)
                seconds[way].append(time.perf_counter() - began)
        for way, times in seconds.items():
            print(f"{clip:16s} {way:20s} median {statistics.median(times) * 1000:7.1f} ms")
    bomb = str(clips["png 6000px mkv"][0])
    for what, code in (("ffmpeg -i (before)", _PEAK_OF_FFMPEG), ("PyAV read (now)", _PEAK_OF_A_PROBE)):
        done = subprocess.run([sys.executable, "-c", code, bomb], capture_output=True, text=True, check=True)
        print(f"png 6000px mkv   {what:20s} peak {float(done.stdout):5.0f} MB (the describing process)")
    return 0


_PEAK_OF_FFMPEG = """
import resource, subprocess, sys, imageio_ffmpeg
command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-f", "matroska", "-i", sys.argv[1]]
subprocess.run(command, capture_output=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
"""
_PEAK_OF_A_PROBE = """
import resource, sys
from pathlib import Path
from contract.container import read_container
read_container(Path(sys.argv[1]), "matroska", 100_000)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""

if __name__ == "__main__":
    sys.exit(main())
