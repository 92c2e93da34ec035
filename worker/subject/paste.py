"""Paste-back: composite a rendered crop into the full source image with a feathered edge.

The model renders only the square around the subject; putting it back where it was cut from keeps
the photo's size and background. A hard edge would show wherever the animated content differs
from the still photo at the crop's border, so the crop fades into the photo over a margin. Sides
of the crop that lie on the photo's border are not faded: there is nothing to blend with.
"""

import cv2
import numpy as np

from worker.subject.box import Box


def feather_ramp(length: int, fade: int, at_start: bool, at_end: bool) -> np.ndarray:
    """(length,) float32 weights: 1 in the middle, a smooth (raised-cosine) fall to 0 at faded ends."""
    weights = np.ones(length, np.float32)
    fade = min(fade, length // 2)
    if fade > 0:
        rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(fade, dtype=np.float32) + 0.5) / fade)
        if at_start:
            weights[:fade] = rise
        if at_end:
            weights[-fade:] = rise[::-1]
    return weights


class Paster:
    """Composites crops rendered for one fixed `box` of `background` ((H, W, 3) uint8)."""

    def __init__(self, background: np.ndarray, box: Box, feather: float = 0.08):
        self.background = background
        height, width = background.shape[:2]
        x0, y0, w, h = box.rounded()
        self.size = (max(w, 1), max(h, 1))
        # the part of the box inside the image, in image and in box coordinates
        ix0, iy0 = max(x0, 0), max(y0, 0)
        ix1, iy1 = min(x0 + self.size[0], width), min(y0 + self.size[1], height)
        if ix1 <= ix0 or iy1 <= iy0:
            raise ValueError(f"box {box} does not overlap the {width}x{height} image")
        self.image_slice = (slice(iy0, iy1), slice(ix0, ix1))
        self.box_slice = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
        fade = max(1, round(feather * min(self.size)))
        across = feather_ramp(self.size[0], fade, x0 > 0, x0 + self.size[0] < width)
        down = feather_ramp(self.size[1], fade, y0 > 0, y0 + self.size[1] < height)
        self.alpha = (down[:, None] * across[None, :])[self.box_slice][..., None]  # (h, w, 1)

    def __call__(self, rendered: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 rendered crop -> (H, W, 3) uint8 background with the crop composited."""
        shrinking = rendered.shape[1] >= self.size[0]
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
        patch = cv2.resize(rendered, self.size, interpolation=interpolation)[self.box_slice]
        out = self.background.copy()
        under = out[self.image_slice].astype(np.float32)
        blended = under + self.alpha * (patch.astype(np.float32) - under)
        out[self.image_slice] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
        return out
