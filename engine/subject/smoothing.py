"""Turning a noisy per-frame track of a crop (centre and side) into a steady virtual camera.

The whole track is known before rendering starts, so the smoothing looks both ways (no lag):
gaps are filled, a Gaussian removes the detector's frame-to-frame noise, then a dead band holds
the camera perfectly still until the subject has really moved, and a shorter Gaussian eases the
camera into and out of each move.
"""

import numpy as np


def fill_gaps(track: np.ndarray) -> np.ndarray:
    """(T, K) with NaN rows where nothing was seen -> interpolated inside, held at both ends."""
    track = np.array(track, dtype=np.float64)
    known = ~np.isnan(track).any(axis=1)
    if not known.any():
        return track
    steps = np.arange(len(track))
    for k in range(track.shape[1]):
        track[:, k] = np.interp(steps, steps[known], track[known, k])
    return track


def gaussian(track: np.ndarray, sigma: float) -> np.ndarray:
    """Zero-phase Gaussian smoothing of (T, K) along time; sigma in frames, ends reflected."""
    if sigma <= 0 or len(track) < 2:
        return np.array(track, dtype=np.float64)
    radius = int(3 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(track, ((radius, radius), (0, 0)), mode="reflect" if len(track) > radius else "edge")
    return np.stack([np.convolve(padded[:, k], taps, mode="valid") for k in range(track.shape[1])], axis=1)


def dead_band(track: np.ndarray, band: np.ndarray) -> np.ndarray:
    """Holds each value until the target leaves +-band around it, then follows at that distance.

    `track` is (T, 3) centre x, centre y, side; `band` (3,) is relative to the current side.
    """
    out = np.empty_like(track)
    out[0] = track[0]
    for t in range(1, len(track)):
        width = band * out[t - 1, 2]
        delta = track[t] - out[t - 1]
        out[t] = out[t - 1] + np.sign(delta) * np.maximum(np.abs(delta) - width, 0.0)
    return out


def steady_camera(
    track: np.ndarray,
    fps: float,
    noise_seconds: float = 0.15,
    ease_seconds: float = 0.1,
    band: tuple[float, float, float] = (0.01, 0.01, 0.015),
) -> np.ndarray:
    """(T, 3) centre x, centre y, side per frame (NaN where unknown) -> the smoothed camera path."""
    path = fill_gaps(track)
    if np.isnan(path).any():
        return path
    path = gaussian(path, noise_seconds * fps)
    path = dead_band(path, np.asarray(band, dtype=np.float64))
    return gaussian(path, ease_seconds * fps)
