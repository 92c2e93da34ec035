"""Cutting a box out of a frame at the model's resolution, padding where the box leaves the frame."""

import cv2
import numpy as np

from engine.subject.box import Box


def cut_out(frame: np.ndarray, box: Box, width: int, height: int) -> np.ndarray:
    """The (height, width, 3) uint8 content of `box` in the (H, W, 3) frame, area-resampled.

    Parts of the box outside the frame repeat the frame's edge pixels: a plain studio background
    continues plausibly, where black bars would look like part of the picture to the model.
    """
    frame_h, frame_w = frame.shape[:2]
    x0, y0, w, h = box.rounded()
    x1, y1 = x0 + max(w, 1), y0 + max(h, 1)
    inside = frame[max(y0, 0) : min(y1, frame_h), max(x0, 0) : min(x1, frame_w)]
    if inside.size == 0:
        raise ValueError(f"box {box} does not overlap the {frame_w}x{frame_h} frame")
    pad = (max(-y0, 0), max(y1 - frame_h, 0), max(-x0, 0), max(x1 - frame_w, 0))
    if any(pad):
        inside = cv2.copyMakeBorder(inside, *pad, cv2.BORDER_REPLICATE)
    if inside.shape[:2] == (height, width):
        return np.ascontiguousarray(inside)
    shrinking = inside.shape[0] >= height and inside.shape[1] >= width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return cv2.resize(inside, (width, height), interpolation=interpolation)
