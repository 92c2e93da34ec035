"""`make demo`: start the service, animate an example through HTTP as a client would, stop the service.

The example media come with the project or are made by it. The source is NASA's portrait of the
astronaut Eileen Collins (public domain), which scikit-image ships, cropped to her head. The driving
clip is generated here from the same portrait: the head gently nods, turns and leans (a slow affine
wobble) over a soft tone. DEMO_SOURCE and DEMO_DRIVING choose other files, DEMO_MODEL another model,
DEMO_OUT another output (default out/demo.mp4); the service reads the usual settings (WEIGHTS_DIR...).
The example media stay beside the output (out/demo/source.png, out/demo/driving.mp4): the README's
curl example sends them.
"""

import importlib.resources
import math
import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import httpx
import imageio_ffmpeg
import numpy as np
from PIL import Image

from contract.settings import Settings
from service.client import ProgressLine, SubmitError, submit_job
from service.launcher import free_port

HEAD_BOX = (101, 0, 351, 250)  # left, top, right, bottom of the astronaut's head in the 512 px portrait
HEAD_CENTRE = (226.0, 110.0)
MARGIN = 48  # edge pixels added around the portrait so the moving crop never shows a border
SIZE = 256
FPS = 25
SECONDS = 4.0
READY_TIMEOUT = 300.0
DEFAULT_OUT = Path("out/demo.mp4")


def media_folder(out: Path) -> Path:
    """Where the demo makes its media and runs its service: `demo/` beside the output."""
    return out.parent / "demo"


def portrait() -> Image.Image:
    """The astronaut portrait from the installed scikit-image wheel (no download)."""
    try:
        path = importlib.resources.files("skimage") / "data" / "astronaut.png"
    except ModuleNotFoundError:
        raise SystemExit(
            "demo: error: scikit-image is not installed: run `make demo`, or set DEMO_SOURCE"
        ) from None
    with importlib.resources.as_file(path) as file, Image.open(file) as image:
        return image.convert("RGB")


def _pose(t: float) -> np.ndarray:
    """The 2x3 inverse affine map of the head at time t: a slow nod, turn and lean, never still."""
    angle = math.radians(7 * math.sin(2 * math.pi * t / 2.7))
    scale = 1 + 0.05 * math.sin(2 * math.pi * t / 3.3)
    shift_x = 10 * math.sin(2 * math.pi * t / 2.1)
    shift_y = 6 * math.sin(2 * math.pi * t / 1.7)
    cx, cy = HEAD_CENTRE[0] + MARGIN, HEAD_CENTRE[1] + MARGIN
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    # output pixel (x, y) samples the portrait at R^-1 (x - c - shift) + c
    return np.array(
        [
            [cos, sin, cx - cos * (cx + shift_x) - sin * (cy + shift_y)],
            [-sin, cos, cy + sin * (cx + shift_x) - cos * (cy + shift_y)],
        ]
    )


def _write_tone(path: Path, seconds: float, rate: int = 22050) -> None:
    t = np.arange(int(seconds * rate)) / rate
    envelope = np.minimum(1.0, np.minimum(t, seconds - t) / 0.3)
    tone = 0.2 * envelope * (np.sin(2 * np.pi * 220 * t) + 0.5 * np.sin(2 * np.pi * 330 * t))
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes((tone * 32767).astype("<i2").tobytes())


def make_media(folder: Path) -> tuple[Path, Path]:
    """The head crop as source.png and a 4 s, 25 fps, 256 px driving.mp4 with audio, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    image = portrait()
    source = folder / "source.png"
    image.crop(HEAD_BOX).resize((SIZE, SIZE), Image.Resampling.LANCZOS).save(source)

    padded = Image.fromarray(
        np.pad(np.asarray(image), ((MARGIN, MARGIN), (MARGIN, MARGIN), (0, 0)), mode="edge")
    )
    box = tuple(v + MARGIN for v in HEAD_BOX)
    tone = folder / "tone.wav"
    _write_tone(tone, SECONDS)
    driving = folder / "driving.mp4"
    writer = imageio_ffmpeg.write_frames(
        str(driving),
        (SIZE, SIZE),
        fps=FPS,
        codec="libx264",
        quality=8,
        macro_block_size=2,
        audio_path=str(tone),
        audio_codec="aac",
        output_params=["-shortest"],
        ffmpeg_log_level="error",
    )
    writer.send(None)
    for index in range(int(SECONDS * FPS)):
        pose = tuple(_pose(index / FPS).ravel())
        moved = padded.transform(padded.size, Image.Transform.AFFINE, pose, Image.Resampling.BICUBIC)
        frame = moved.crop(box).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
        writer.send(np.ascontiguousarray(np.asarray(frame)))
    writer.close()
    tone.unlink()
    return source, driving


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> int:
    settings = Settings()
    checkpoints = settings.checkpoints()
    if not checkpoints:
        print(
            f"demo: error: no checkpoint (*.pth.tar, *.pth) in {settings.weights_dir}/: put the starter "
            "model at weights/starter.pth.tar, or point WEIGHTS_DIR at a folder holding one",
            file=sys.stderr,
        )
        return 1
    model = os.environ.get("DEMO_MODEL") or (
        settings.default_model if settings.default_model in checkpoints else next(iter(checkpoints))
    )
    out = Path(os.environ.get("DEMO_OUT") or DEFAULT_OUT)
    work = media_folder(out)
    work.mkdir(parents=True, exist_ok=True)
    if os.environ.get("DEMO_SOURCE") and os.environ.get("DEMO_DRIVING"):
        source, driving = Path(os.environ["DEMO_SOURCE"]), Path(os.environ["DEMO_DRIVING"])
    else:
        print("demo: making the example media (astronaut portrait, generated head motion)", file=sys.stderr)
        made_source, made_driving = make_media(work)
        source = Path(os.environ.get("DEMO_SOURCE") or made_source)
        driving = Path(os.environ.get("DEMO_DRIVING") or made_driving)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "DATA_DIR": str(work / "data")}
    env["API_KEYS"] = ""  # the embedded demo service, on loopback, needs no key
    log_path = work / "service.log"
    print(f"demo: starting the service on {url} (log: {log_path})", file=sys.stderr)
    with log_path.open("wb") as log:
        service = subprocess.Popen(
            [sys.executable, "-m", "service.launcher"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not _ready(url):
            if service.poll() is not None or time.monotonic() > deadline:
                print(f"demo: error: the service did not start; see {log_path}", file=sys.stderr)
                return 1
            time.sleep(0.5)
        print(f"demo: POST {url}/animate  source={source}  driving={driving}  model={model}", file=sys.stderr)
        job = submit_job(url, source, driving, out, {"model": model}, progress=ProgressLine())
    except SubmitError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(60)
        except subprocess.TimeoutExpired:
            service.kill()
    result, timings = job["result"], job["timings"]
    print(
        f"demo: wrote {out}: {result['frames']} frames, {result['width']}x{result['height']}, "
        f"{result['fps']:g} fps, audio {'on' if result['audio'] else 'off'}; "
        f"rendered in {timings['render']:.1f} s by model {model!r}; the service is stopped",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
