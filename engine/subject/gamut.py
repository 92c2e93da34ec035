"""The colours a photo has, so that paste-back never adds one it does not have.

A model trained on colour video renders a black-and-white photo with a tint here and there (green
hair tips, a magenta halo), and paste-back's moved detail can leave colour fringes. So the pasted
pixels' chroma is held to the photo's gamut: the convex hull of the chroma of the photo's pixels,
on a grid of whole levels. A grayscale photo's gamut is the single point of no chroma, so its
video stays grayscale exactly; a sepia photo's is a thin sliver of browns; a colour photo's covers
the mixtures of its colours. A pixel outside is given the nearest chroma inside, keeping its luma.

Chroma is (B - Y, R - Y) with Y the BT.601 luma, in levels of 255.
"""

import cv2
import numpy as np

LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # weights of R, G, B
REACH = 227  # |B - Y| <= 0.886 * 255 and |R - Y| <= 0.701 * 255: the grid spans -REACH..REACH


def luma_and_chroma(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 3) RGB -> luma (...) float32 and chroma (..., 2) float32: B - Y, R - Y."""
    pixels = image.astype(np.float32)
    luma = pixels @ LUMA
    return luma, np.stack([pixels[..., 2] - luma, pixels[..., 0] - luma], axis=-1)


def from_luma_and_chroma(luma: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    """The inverse of luma_and_chroma, rounded to (..., 3) uint8; no chroma gives R = G = B = Y."""
    blue, red = luma + chroma[..., 0], luma + chroma[..., 1]
    green = luma - (LUMA[0] * chroma[..., 1] + LUMA[2] * chroma[..., 0]) / LUMA[1]
    return np.clip(np.rint(np.stack([red, green, blue], axis=-1)), 0, 255).astype(np.uint8)


class ColourGamut:
    """The chroma gamut of an (H, W, 3) uint8 image, and colours held to it."""

    def __init__(self, image: np.ndarray):
        side = 2 * REACH + 1
        _, chroma = luma_and_chroma(image.reshape(-1, 3))
        cells = np.rint(chroma).astype(np.int32) + REACH
        seen = np.flatnonzero(np.bincount(cells[:, 1] * side + cells[:, 0], minlength=side * side))
        cells = np.stack([seen % side, seen // side], axis=1).astype(np.int32)  # (M, 2) B - Y, R - Y
        outside = np.full((side, side), 255, np.uint8)
        hull = cv2.convexHull(cells.reshape(-1, 1, 2))
        cv2.fillConvexPoly(outside, hull, 0)
        cv2.polylines(outside, [hull], True, 0)  # a hull of one or two cells has no area to fill
        outside[cells[:, 1], cells[:, 0]] = 0
        # the nearest inside cell of every cell: inside cells are their own
        _, labels = cv2.distanceTransformWithLabels(outside, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
        inside = np.argwhere(outside == 0)  # (K, 2) rows (R - Y), columns (B - Y)
        where = np.zeros((labels.max() + 1, 2), np.int32)
        where[labels[inside[:, 0], inside[:, 1]]] = inside[:, ::-1] - REACH
        self.nearest = where[labels]  # (2 REACH + 1, 2 REACH + 1, 2): chroma B - Y, R - Y

    def hold(self, image: np.ndarray) -> np.ndarray:
        """(..., 3) uint8 with every pixel's chroma inside the gamut: pixels already inside are left
        as they are, the others get the nearest chroma inside with their own luma."""
        luma, chroma = luma_and_chroma(image)
        cells = np.rint(chroma).astype(np.int32)
        held = self.nearest[cells[..., 1] + REACH, cells[..., 0] + REACH]
        moved = (held != cells).any(axis=-1)
        if not moved.any():
            return image
        out = image.copy()
        out[moved] = from_luma_and_chroma(luma[moved], held[moved].astype(np.float32))
        return out
