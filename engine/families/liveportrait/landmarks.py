"""The published `landmark.onnx` (203 face landmarks), optional: it gives the eye and lip close ratios
that eye/lip retargeting and lip normalisation need. Run with onnxruntime on the CPU, as published:
the crop resized to 224x224, RGB in [0, 1], the third output's points times 224.

Users who want those options put the file next to the weights (`liveportrait/landmark.onnx` in the
published repository) and install onnxruntime (`pip install onnxruntime`); without either, the
family does not offer them and says which is missing (family.py).
"""

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.families.liveportrait.regions import calc_eye_close_ratio, calc_lip_close_ratio

LANDMARK_FILE = "landmark.onnx"
LANDMARK_INPUT = 224  # the published runner's crop side
RETARGETING_OPTIONS = ("eye_retargeting", "lip_retargeting", "normalize_lips")


def landmark_file(root: Path | None) -> Path | None:
    """The landmark model next to the weights, or None."""
    path = None if root is None else root / LANDMARK_FILE
    return path if path is not None and path.is_file() else None


def missing_for_landmarks(path: Path | None) -> str | None:
    """Why the landmark ratios cannot be measured (RETARGETING_OPTIONS' refusal); None if they can."""
    if path is None:
        return (
            f"needs the published {LANDMARK_FILE} next to its weights "
            "(the eye and lip ratios come from its 203 landmarks)"
        )
    if importlib.util.find_spec("onnxruntime") is None:
        return f"needs onnxruntime to run its {LANDMARK_FILE} (pip install onnxruntime)"
    return None


class LandmarkRunner:
    """203 landmarks of face crops, one onnxruntime call per crop (the published model's batch is 1)."""

    def __init__(self, path: Path):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # small next to the networks; leave the cores to them
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, frames: torch.Tensor) -> np.ndarray:
        """(N, 3, H, W) square crops in [0, 1] -> (N, 203, 2) points in 224-pixel crop coordinates."""
        size = (LANDMARK_INPUT, LANDMARK_INPUT)
        crops = F.interpolate(frames.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
        crops = crops.contiguous().cpu().numpy()
        points = [self.session.run(None, {self.input_name: crops[i : i + 1]})[2] for i in range(len(crops))]
        return np.concatenate([p.reshape(1, -1, 2) for p in points]) * LANDMARK_INPUT

    def ratios(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """`eye_ratio` (N, 2) and `lip_ratio` (N, 1), float32: how open the eyes and lips are."""
        points = self(frames)
        return {
            "eye_ratio": torch.from_numpy(calc_eye_close_ratio(points)).float(),
            "lip_ratio": torch.from_numpy(calc_lip_close_ratio(points)).float(),
        }
