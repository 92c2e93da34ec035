"""Paste-back: composite the animated crop into the full photo with no visible border.

The model renders a small square (64 to 256 px) of a photo that is often several times larger.
Upscaled, that square is soft and a little off in colour, so pasting it as a box shows the box. So:

1. Residual transport. The model renders the source once with no motion (the "still"). The photo
   minus the upscaled still is everything the model loses: detail, colour. Each animated frame
   gets that residual added back, moved by the frame's motion field relative to the still's, so
   where the animation only moves the photo's content the result is the photo's own pixels, moved.
   Where the generator in-paints (its occlusion map drops below the still's), only the residual's
   low frequencies are added: the photo's colour, without detail that would be in the wrong place.
2. Change mask. Where the frame's pixels do not differ from the still's, the photo is kept
   exactly. The mask is soft (dilated, then blurred) and falls to zero towards the sides of
   the crop that lie inside the photo, so it has no edge of its own; sides on the photo's border
   are not faded. A model without a motion field gets the colour correction only.
3. Gamut. The pasted pixels' chroma is held to the colours of the photo's crop (engine/subject/
   gamut.py), so a model's tint or a fringe never adds a colour the photo does not have: a
   grayscale photo stays grayscale exactly.
"""

from dataclasses import dataclass

import cv2
import numpy as np

from engine.subject.box import Box
from engine.subject.cutout import cut_out
from engine.subject.gamut import ColourGamut

COLOUR_CHANGE = (6.0, 18.0)  # levels of 255 (model resolution): a pixel starts / fully counts as changed
GROW = 0.08  # the changed region is dilated by this share of the model's side ...
SOFTEN = 0.04  # ... then blurred with a Gaussian of this sigma (share of the side)
COLOUR_SCALE = 1 / 16  # sigma of the low-pass that gives the residual's colour, share of the crop's side
INVISIBLE = 1 / 512  # mask weights below this cannot change a uint8 pixel: they are made zero


@dataclass(frozen=True)
class ModelFrame:
    """One frame as the model rendered it, with the motion that produced it, at model resolution."""

    image: np.ndarray  # (h, w, 3) uint8
    deformation: np.ndarray | None = None  # (h', w', 2) float32 grid into the source: x, y in [-1, 1]
    occlusion: np.ndarray | None = None  # (h', w') float32: 1 where the warped source is used, 0 in-painted


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


def smooth_ramp(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """0 below `low`, 1 above `high`, a smoothstep between: float32."""
    t = np.clip((values - low) / (high - low), 0, 1).astype(np.float32)
    return t * t * (3 - 2 * t)


def resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` as float32 at (width, height) `size`: bicubic up, area-averaged down."""
    if image.shape[1] == size[0] and image.shape[0] == size[1]:
        return image.astype(np.float32)
    shrinking = image.shape[1] >= size[0]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return cv2.resize(image.astype(np.float32), size, interpolation=interpolation)


def _blurred(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image.astype(np.float32), (3, 3), 0)


class Paster:
    """Composites frames rendered for one fixed `box` of `photo` ((H, W, 3) uint8).

    `still`: the model's rendering of the source with no motion (see the module's docstring).
    """

    def __init__(self, photo: np.ndarray, box: Box, still: ModelFrame, feather: float = 0.08):
        self.photo = photo
        height, width = photo.shape[:2]
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
        self.window = down[:, None] * across[None, :]  # (h, w)

        self.still = still
        self.still_blurred = _blurred(still.image)
        model_h, model_w = still.image.shape[:2]
        self.model_size = (model_w, model_h)
        self.model_side = min(model_h, model_w)
        crop = cut_out(photo, box, *self.size)  # (h, w, 3), edges repeated outside
        self.gamut = ColourGamut(crop)
        residual = crop.astype(np.float32) - resized(still.image, self.size)
        # its colour (low frequencies) is moved at model resolution, its detail at full resolution
        self.colour = cv2.GaussianBlur(
            resized(residual, self.model_size), (0, 0), COLOUR_SCALE * self.model_side
        )
        self.detail = residual - resized(self.colour, self.size)  # (h, w, 3)
        self.grid_x, self.grid_y = np.meshgrid(
            np.arange(self.size[0], dtype=np.float32), np.arange(self.size[1], dtype=np.float32)
        )
        self.model_grid = np.dstack(
            np.meshgrid(np.arange(model_w, dtype=np.float32), np.arange(model_h, dtype=np.float32))
        )  # (h', w', 2)
        radius = max(1, round(GROW * self.model_side))
        self.grow_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))

    def _has_motion(self, frame: ModelFrame) -> bool:
        return frame.deformation is not None and self.still.deformation is not None

    def change(self, frame: ModelFrame) -> np.ndarray:
        """(h, w) float32 in [0, 1] at model resolution: how surely the frame's pixels differ from the
        still's. Motion alone does not count: a background the model drags along with the head by a
        pixel but that looks the same stays the photo's, sharp and still."""
        colour = np.abs(_blurred(frame.image) - self.still_blurred).max(axis=2)
        changed = cv2.dilate(smooth_ramp(colour, *COLOUR_CHANGE), self.grow_kernel)
        return cv2.GaussianBlur(changed, (0, 0), SOFTEN * self.model_side)

    def mask(self, frame: ModelFrame) -> np.ndarray:
        """(h, w) float32 blend weights over the box: the change, upscaled, faded at inner sides."""
        weights = cv2.resize(self.change(frame), self.size, interpolation=cv2.INTER_LINEAR)
        weights *= self.window
        weights[weights < INVISIBLE] = 0
        return np.minimum(weights, 1, out=weights)

    def _shift(self, frame: ModelFrame, size: tuple[int, int]) -> np.ndarray:
        """(height, width, 2) float32: the frame's motion relative to the still's, in pixels of a
        (width, height) `size` image of the crop."""
        shift = cv2.resize(frame.deformation - self.still.deformation, size, interpolation=cv2.INTER_LINEAR)
        shift *= np.array([(size[0] - 1) / 2, (size[1] - 1) / 2], np.float32)
        return shift

    def composite(self, frame: ModelFrame) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 photo with the frame composited, and the (H, W) float32 weights used."""
        out = self.photo.copy()
        weights = np.zeros(self.photo.shape[:2], np.float32)
        box_weights = self.mask(frame)[self.box_slice]
        weights[self.image_slice] = box_weights
        rows, cols = np.flatnonzero(box_weights.any(axis=1)), np.flatnonzero(box_weights.any(axis=0))
        if len(rows) == 0:
            return out, weights
        y, x = rows[0], cols[0]
        h, w = rows[-1] + 1 - y, cols[-1] + 1 - x
        in_box = (slice(self.box_slice[0].start + y, self.box_slice[0].start + y + h),
                  slice(self.box_slice[1].start + x, self.box_slice[1].start + x + w))  # fmt: skip
        in_image = (slice(self.image_slice[0].start + y, self.image_slice[0].start + y + h),
                    slice(self.image_slice[1].start + x, self.image_slice[1].start + x + w))  # fmt: skip
        alpha = box_weights[y : y + h, x : x + w, None]

        # the animated frame with the photo's colour, at model resolution, then upscaled
        animated = frame.image.astype(np.float32)
        if self._has_motion(frame):
            shift = self._shift(frame, self.model_size) + self.model_grid
            animated += cv2.remap(self.colour, shift, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        else:
            animated += self.colour
        under = out[in_image].astype(np.float32)
        blended = resized(animated, self.size)[in_box]
        blended -= under
        blended *= alpha
        blended += under
        if self._has_motion(frame):  # the photo's detail, moved, where the source is still visible
            shift = self._shift(frame, self.size)[in_box]
            shift[..., 0] += self.grid_x[in_box]
            shift[..., 1] += self.grid_y[in_box]
            detail = cv2.remap(self.detail, shift, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            keep = alpha
            if frame.occlusion is not None and self.still.occlusion is not None:
                visible = np.clip(frame.occlusion / np.maximum(self.still.occlusion, 0.05), 0, 1)
                keep = (
                    alpha * cv2.resize(visible, self.size, interpolation=cv2.INTER_LINEAR)[in_box][..., None]
                )
            detail *= keep
            blended += detail
        blended += 0.5
        out[in_image] = self.gamut.hold(np.clip(blended, 0, 255, out=blended).astype(np.uint8))
        return out, weights

    def __call__(self, frame: ModelFrame) -> np.ndarray:
        """(H, W, 3) uint8: the photo with `frame` composited."""
        return self.composite(frame)[0]
