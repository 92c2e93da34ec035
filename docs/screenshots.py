"""Make docs/web-upload.png and docs/web-live.png: the web page's two tabs in headless Chromium.

    .venv/bin/python docs/screenshots.py [--checkpoint weights/starter.pth.tar]

The service is started as in the tests (private Redis, a worker, a live worker, uvicorn). The media
are the demo's own (service/demo.py): NASA's public-domain astronaut portrait as the photo, and the
clip generated from it as both the uploaded video and the fake camera, so nothing from ../shared
ends up in the pictures. PNGs are reduced to a 128-colour palette to stay small.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.demo import make_media  # noqa: E402
from tests.browser import camera_file, chromium_page  # noqa: E402
from tests.live_stack import LiveStack  # noqa: E402

TIMEOUT_MS = 180_000


def save_small(page, path: Path) -> None:
    page.screenshot(path=str(path))
    with Image.open(path) as image:
        image.convert("RGB").quantize(128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"screenshots: {path} ({path.stat().st_size // 1024} KB)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "weights" / "starter.pth.tar")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    if not args.checkpoint.is_file():
        print(f"screenshots: error: {args.checkpoint} is missing", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp:
        folder = Path(tmp)
        (folder / "weights").mkdir()
        (folder / "weights" / "starter.pth.tar").symlink_to(args.checkpoint.resolve())
        source, driving = make_media(folder)
        camera = camera_file(driving, folder / "camera.y4m", seconds=4, size="320:320")
        stack = LiveStack(folder / "service", folder / "weights", render_worker=True)
        stack.env["DEFAULT_MODEL"] = "starter"
        (folder / "service").mkdir()
        try:
            stack.start()
            with chromium_page(folder / "profile", camera, width=1000, height=640) as page:
                page.goto(stack.url + "/")
                page.set_input_files("#upload-source", str(source))
                page.set_input_files("#upload-driving", str(driving))
                page.click("#upload-submit")
                page.wait_for_function(
                    "document.querySelector('#result-video').readyState >= 2", timeout=TIMEOUT_MS
                )
                page.evaluate(
                    "(() => { const v = document.querySelector('#result-video'); v.currentTime = 1.5; })()"
                )
                time.sleep(1)
                save_small(page, args.out / "web-upload.png")
                page.click("#tab-live")
                page.set_input_files("#live-source", str(source))
                page.click("#live-start")
                page.wait_for_function(
                    "Number(document.querySelector('#live-frames').textContent) >= 100", timeout=TIMEOUT_MS
                )
                save_small(page, args.out / "web-live.png")
                page.click("#live-stop")
        finally:
            stack.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
