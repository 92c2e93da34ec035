"""Reconstruction evaluation by the published protocol, next to the copy-the-source baseline.

For each video: the source is the first frame, every frame (the first included) is a driving frame,
the model reconstructs it from the source and the driving frame's keypoints, and the error is the
mean absolute difference in [0, 1]. The baseline "predicts" the source itself. The overall numbers
are means over all frames of all videos, as the published script reports them.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.train.dataset import decode_sequence, list_sequences

# (1, 3, H, W) source, (T, 3, H, W) driving frames in [0, 1] -> (T, 3, H, W) reconstructions.
Reconstructor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class VideoScore:
    name: str
    frames: int
    model_l1: float
    baseline_l1: float


@dataclass(frozen=True)
class EvalReport:
    videos: list[VideoScore]

    @property
    def frames(self) -> int:
        return sum(v.frames for v in self.videos)

    @property
    def model_l1(self) -> float:
        return sum(v.model_l1 * v.frames for v in self.videos) / self.frames

    @property
    def baseline_l1(self) -> float:
        return sum(v.baseline_l1 * v.frames for v in self.videos) / self.frames

    def to_dict(self) -> dict:
        return {
            "videos": [v.__dict__ for v in self.videos],
            "frames": self.frames,
            "model_l1": self.model_l1,
            "baseline_l1": self.baseline_l1,
        }


def score_video(
    name: str, frames: np.ndarray, reconstruct: Reconstructor, batch_size: int = 16
) -> VideoScore:
    """frames (T, H, W, 3) uint8 -> mean L1 of the model and of copying the first frame."""
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255  # (T, 3, H, W)
    source = video[:1]
    model_errors, baseline_errors = [], []
    for start in range(0, len(video), batch_size):
        driving = video[start : start + batch_size]
        prediction = reconstruct(source, driving).float().cpu()
        model_errors.append((prediction - driving).abs().mean(dim=(1, 2, 3)))
        baseline_errors.append((source - driving).abs().mean(dim=(1, 2, 3)))
    return VideoScore(
        name,
        len(video),
        float(torch.cat(model_errors).double().mean()),
        float(torch.cat(baseline_errors).double().mean()),
    )


def evaluate(
    reconstruct: Reconstructor,
    data_dir: str | Path,
    frame_shape: tuple[int, int],
    batch_size: int = 16,
) -> EvalReport:
    """Score every video or frame folder in `data_dir`, decoded at the model's frame size."""
    scores = []
    for path in list_sequences(data_dir):
        frames = decode_sequence(path, *frame_shape)
        scores.append(
            score_video(path.stem if path.is_file() else path.name, frames, reconstruct, batch_size)
        )
    return EvalReport(scores)
