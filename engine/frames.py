"""Frames between numpy (uint8, (N, H, W, 3)) and torch (float in [0, 1], (N, 3, H, W))."""

import numpy as np
import torch

from engine.subject.paste import ModelFrame


def to_tensor(frames: np.ndarray, device: str) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 1], converted on `device`.

    Bytes cross to a GPU as uint8 (a quarter of the float size) from pinned memory, asynchronously.
    """
    pixels = torch.from_numpy(frames)
    if torch.device(device).type == "cuda":
        pixels = pixels.pin_memory().to(device, non_blocking=True)
    return pixels.permute(0, 3, 1, 2).float().div_(255)


def to_frames(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) float in [0, 1] -> (N, H, W, 3) uint8."""
    return images.float().clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def model_frames(out: dict[str, torch.Tensor]) -> list[ModelFrame]:
    """An adapter's output as numpy frames with their motion, for paste-back."""
    images = to_frames(out["prediction"])
    deformation = out.get("deformation")
    occlusion = out.get("occlusion_map")
    deformation = None if deformation is None else deformation.float().cpu().numpy()  # (N, h, w, 2)
    occlusion = None if occlusion is None else occlusion.float()[:, 0].cpu().numpy()  # (N, h, w)
    return [
        ModelFrame(
            image,
            None if deformation is None else deformation[i],
            None if occlusion is None else occlusion[i],
        )
        for i, image in enumerate(images)
    ]
