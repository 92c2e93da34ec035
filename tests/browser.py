"""Headless Debian chromium driven by Playwright, with its fake camera playing a video file."""

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import imageio_ffmpeg
from playwright.sync_api import Page, sync_playwright

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]


class ChromiumMissing(RuntimeError):
    pass


def camera_file(video: Path, out: Path, seconds: float = 2, size: str = "320:240") -> Path:
    """A piece of `video` as Y4M, the format Chromium's fake camera plays (in a loop)."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(video), "-t", str(seconds)]
    command += ["-vf", f"scale={size},fps=15", "-pix_fmt", "yuv420p", str(out)]
    subprocess.run(command, check=True)
    return out


@contextlib.contextmanager
def chromium_page(profile: Path, camera: Path, width: int = 1100, height: int = 720) -> Iterator[Page]:
    """A page of a headless chromium with a fresh profile in `profile` and `camera` as its webcam."""
    if not CHROMIUM.exists():
        raise ChromiumMissing(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=[*FLAGS, f"--use-file-for-fake-video-capture={camera}"],
            viewport={"width": width, "height": height},
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()
