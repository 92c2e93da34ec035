"""Paste-back benchmark: how visible the crop's border is, and how much of the photo outside the
subject survives, for the previous paste (the upscaled crop in a feathered box) and the current one.

For each shared portrait (crop auto, paste-back) and the first frames of a shared driving clip, the
bundled starter model renders the crop once; both pastes composite the same frames. Per frame:

- border, coarse: the energy of the gradient across each side of the crop that lies inside the
  photo, in a band as wide as the old feather on both sides, after a Gaussian blur of a quarter
  of that width (the scale at which a colour or brightness seam shows), divided by the same energy
  in the photo itself. 1.00: the photo's own gradients, no seam.
- border, fine: the same without the blur (pixel-scale gradients, in both directions): below 1.00
  the band is softer than the photo, the "blurred box".
- outside the subject (the face found in the photo, grown 1.6x for hair and chin): the mean absolute
  change in levels, the share of pixels changed by more than 2 levels, and the sharpness (gradient
  energy) of the part inside the crop relative to the photo's (1.00: as sharp as the photo).
- inside the subject: the same sharpness ratio.

    .venv/bin/python bench/paste.py [--frames 48] [--clip d3] [--png /tmp/paste]
"""

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import load_checkpoint  # noqa: E402
from engine.animator import Animator  # noqa: E402
from engine.frames import model_frames, to_tensor  # noqa: E402
from engine.media.video_io import load_image, probe_video  # noqa: E402
from engine.subject.autocrop import image_face  # noqa: E402
from engine.subject.box import Box  # noqa: E402
from engine.subject.framing import plan_framing  # noqa: E402
from engine.subject.paste import ModelFrame, feather_ramp, resized  # noqa: E402

MEDIA = ROOT.parent / "shared" / "media"
FEATHER = 0.08  # the previous paste's feather, also the band measured around the border
SUBJECT_GROWTH = 1.6  # the face box grown to the head: what is outside is background, clothes


def feathered_box_paste(photo: np.ndarray, box: Box, frame: ModelFrame) -> np.ndarray:
    """The previous paste-back: the whole upscaled crop, faded into the photo at its inner sides."""
    height, width = photo.shape[:2]
    x0, y0, w, h = box.rounded()
    fade = max(1, round(FEATHER * min(w, h)))
    across = feather_ramp(w, fade, x0 > 0, x0 + w < width)
    down = feather_ramp(h, fade, y0 > 0, y0 + h < height)
    alpha = (down[:, None] * across[None, :])[..., None]
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + w, width), min(y0 + h, height)
    inside = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
    patch = resized(frame.image, (w, h))[inside]
    out = photo.copy()
    under = out[iy0:iy1, ix0:ix1].astype(np.float32)
    out[iy0:iy1, ix0:ix1] = np.clip(under + alpha[inside] * (patch - under) + 0.5, 0, 255).astype(np.uint8)
    return out


def luma(image: np.ndarray, sigma: float = 0.0) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return cv2.GaussianBlur(gray, (0, 0), sigma) if sigma > 0 else gray


def border_bands(photo_shape: tuple[int, ...], box: Box) -> list[tuple[np.ndarray, int]]:
    """(boolean band mask, axis of the gradient across the border) for each inner side of the box."""
    height, width = photo_shape[:2]
    x0, y0, w, h = box.rounded()
    band = max(2, round(FEATHER * min(w, h)))
    bands = []
    ys, xs = slice(max(y0, 0), min(y0 + h, height)), slice(max(x0, 0), min(x0 + w, width))
    for position, axis, inner in ((x0, 1, x0 > 0), (x0 + w, 1, x0 + w < width)):
        if inner:
            mask = np.zeros((height, width), bool)
            mask[ys, max(position - band, 0) : min(position + band, width)] = True
            bands.append((mask, axis))
    for position, axis, inner in ((y0, 0, y0 > 0), (y0 + h, 0, y0 + h < height)):
        if inner:
            mask = np.zeros((height, width), bool)
            mask[max(position - band, 0) : min(position + band, height), xs] = True
            bands.append((mask, axis))
    return bands


def gradient_energy(gray: np.ndarray, axis: int | None, where: np.ndarray) -> float:
    """Mean squared gradient over `where`: along `axis` (0 down, 1 across), or both when None."""
    gy, gx = np.gradient(gray)
    energy = {0: gy**2, 1: gx**2, None: gx**2 + gy**2}[axis]
    return float(energy[where].mean())


def ratio(gray: np.ndarray, photo: np.ndarray, axis: int | None, where: np.ndarray) -> float:
    return gradient_energy(gray, axis, where) / max(gradient_energy(photo, axis, where), 1e-6)


class Measure:
    """The figures of one portrait's frames for one paste method."""

    def __init__(self, photo: np.ndarray, box: Box, subject: Box | None):
        self.photo = photo
        self.bands = border_bands(photo.shape, box)
        height, width = photo.shape[:2]
        band = max(2, round(FEATHER * min(box.w, box.h)))
        self.sigma = band / 4
        self.photo_coarse = luma(photo, self.sigma)
        self.photo_fine = luma(photo)
        in_crop = np.zeros((height, width), bool)
        x0, y0, w, h = box.rounded()
        in_crop[max(y0, 0) : y0 + h, max(x0, 0) : x0 + w] = True
        self.outside = np.ones((height, width), bool)
        self.inside = np.zeros((height, width), bool)
        if subject is not None:
            s = subject.grown(SUBJECT_GROWTH).clipped(width, height)
            area = (slice(int(s.y), int(np.ceil(s.bottom))), slice(int(s.x), int(np.ceil(s.right))))
            self.outside[area] = False
            self.inside[area] = True
        self.outside_in_crop = self.outside & in_crop
        self.rows: list[dict[str, float]] = []

    def add(self, out: np.ndarray) -> None:
        row: dict[str, float] = {}
        if self.bands:
            coarse, fine = luma(out, self.sigma), luma(out)
            row["border_coarse"] = float(
                np.mean([ratio(coarse, self.photo_coarse, axis, band) for band, axis in self.bands])
            )
            row["border_fine"] = float(
                np.mean([ratio(fine, self.photo_fine, None, band) for band, _ in self.bands])
            )
        change = np.abs(out.astype(np.int16) - self.photo).max(axis=2)
        fine = luma(out)
        for name, where in (("outside_sharpness", self.outside_in_crop), ("subject_sharpness", self.inside)):
            if where.any():
                row[name] = ratio(fine, self.photo_fine, None, where)
        if self.outside.any():
            row["outside_change"] = float(change[self.outside].mean())
            row["outside_changed_share"] = float((change[self.outside] > 2).mean())
        self.rows.append(row)

    def summary(self) -> dict[str, float]:
        keys = sorted({k for row in self.rows for k in row})
        return {k: float(np.mean([row[k] for row in self.rows if k in row])) for k in keys}


def cut_clip(clip: Path, out: Path, frames: int) -> Path:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(clip)]
    command += ["-frames:v", str(frames), "-an", "-pix_fmt", "yuv420p", str(out)]
    subprocess.run(command, check=True)
    return out


def rendered_frames(renderer: Animator, framing, frames: int, batch: int = 8):
    """The still and the first `frames` animated ModelFrames of the framing's driving video."""
    h, w = renderer.model.frame_shape
    source = to_tensor(framing.source_input(h, w)[None], "cpu")
    with torch.inference_mode():
        state = renderer.prepare_source(source)
        still = renderer.still(state)
        driving = list(framing.driving_frames(h, w))[:frames]
        out = []
        for start in range(0, len(driving), batch):
            batch_frames = to_tensor(np.stack(driving[start : start + batch]), "cpu")
            out.extend(model_frames(renderer.animate_with_motion(state, batch_frames)))
    return still, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--clip", default="d3", help="driving clip in ../shared/media/clips")
    parser.add_argument("--checkpoint", default=str(ROOT / "weights" / "starter.pth.tar"))
    parser.add_argument("--png", help="folder for side-by-side pictures of one frame per portrait")
    args = parser.parse_args()
    torch.set_num_threads(1)
    renderer = Animator(load_checkpoint(args.checkpoint))
    images = sorted((MEDIA / "images").glob("*.jpg"))
    print(f"# paste-back, {args.frames} frames of {args.clip}, {len(images)} portraits, {platform.machine()}")
    columns = {
        "border_coarse": "border: coarse gradient ratio",
        "border_fine": "border: fine gradient ratio",
        "outside_change": "outside subject: mean change",
        "outside_changed_share": "outside: share changed",
        "outside_sharpness": "outside, in crop: sharpness",
        "subject_sharpness": "subject: sharpness",
    }
    print("| portrait | size | crop | method | " + " | ".join(columns.values()) + " |")
    print("|---" * (4 + len(columns)) + "|")

    def cells(figures: dict[str, float]) -> str:
        shown = []
        for key in columns:
            value = figures.get(key, np.nan)
            shown.append(
                "-" if np.isnan(value) else f"{value:.1%}" if key.endswith("share") else f"{value:.2f}"
            )
        return " | ".join(shown)

    totals: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    seconds = {"before": 0.0, "after": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        clip = cut_clip(MEDIA / "clips" / f"{args.clip}.mp4", Path(tmp) / "clip.mp4", args.frames)
        info = probe_video(clip)
        for path in images:
            photo = load_image(path)
            framing = plan_framing(photo, clip, info, "auto", paste_back=True)
            photo = framing.source
            height, width = photo.shape[:2]
            box = framing.source_box or Box(0, 0, width, height)
            still, frames = rendered_frames(renderer, framing, args.frames)
            framing.prepare_paste(still)
            subject = image_face(photo)
            measures = {"before": Measure(photo, box, subject), "after": Measure(photo, box, subject)}
            shown = {}
            for index, frame in enumerate(frames):
                for method in ("before", "after"):
                    started = time.perf_counter()
                    out = (
                        feathered_box_paste(photo, box, frame)
                        if method == "before"
                        else framing.paster(frame)
                    )
                    seconds[method] += time.perf_counter() - started
                    measures[method].add(out)
                    if index == len(frames) * 2 // 3:
                        shown[method] = out
            if args.png:
                Path(args.png).mkdir(parents=True, exist_ok=True)
                mask = framing.paster.composite(frames[len(frames) * 2 // 3])[1]
                mask_rgb = np.repeat((mask[..., None] * 255).astype(np.uint8), 3, axis=2)
                sheet = np.hstack([photo, shown["before"], shown["after"], mask_rgb])
                cv2.imwrite(str(Path(args.png) / f"{path.stem}.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
            x, y, w, h = box.rounded()
            for method in ("before", "after"):
                figures = measures[method].summary()
                totals[method].append(figures)
                print(f"| {path.stem} | {width}x{height} | {w} at {x},{y} | {method} | {cells(figures)} |")
    for method in ("before", "after"):
        mean = {k: float(np.nanmean([f.get(k, np.nan) for f in totals[method]])) for k in columns}
        print(f"| all (mean) | | | {method} | {cells(mean)} |")
    frames_pasted = len(images) * args.frames
    per_frame = {method: 1000 * seconds[method] / frames_pasted for method in seconds}
    print(
        f"\npaste per frame, one thread: before {per_frame['before']:.1f} ms, "
        f"after {per_frame['after']:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
