"""Head pose from the motion extractor's bins, and the rotation built from it, as published.

Pose angles are 66 bins of 3 degrees: degrees = sum(softmax(logits) * [0..65]) * 3 - 97.5. The
rotation is (Rz(roll) Ry(yaw) Rx(pitch))^T, returned transposed because keypoints are rows:
rotated = kp @ R.
"""

import math

import torch
import torch.nn.functional as F

NUM_BINS = 66
DEGREES_PER_BIN = 3
DEGREES_OFFSET = 97.5  # (NUM_BINS - 1) * DEGREES_PER_BIN / 2: bin 32.5 is straight ahead


def headpose_pred_to_degree(pred: torch.Tensor) -> torch.Tensor:
    """(N, 66) logits -> (N,) degrees; anything else (angles already in degrees) is returned as is."""
    if pred.ndim > 1 and pred.shape[1] == NUM_BINS:
        bins = torch.arange(NUM_BINS, dtype=pred.dtype, device=pred.device)
        return torch.sum(F.softmax(pred, dim=1) * bins, dim=1) * DEGREES_PER_BIN - DEGREES_OFFSET
    return pred


def get_rotation_matrix(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Angles in degrees, (N,) or (N, 1) each -> (N, 3, 3) = (Rz Ry Rx)^T."""
    x, y, z = (angle.reshape(-1) / 180 * math.pi for angle in (pitch, yaw, roll))
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rot_x = torch.stack([one, zero, zero, zero, x.cos(), -x.sin(), zero, x.sin(), x.cos()], dim=1)
    rot_y = torch.stack([y.cos(), zero, y.sin(), zero, one, zero, -y.sin(), zero, y.cos()], dim=1)
    rot_z = torch.stack([z.cos(), -z.sin(), zero, z.sin(), z.cos(), zero, zero, zero, one], dim=1)
    rot = rot_z.view(-1, 3, 3) @ rot_y.view(-1, 3, 3) @ rot_x.view(-1, 3, 3)
    return rot.transpose(1, 2)
