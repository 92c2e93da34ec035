"""The per-job state every model adapter keeps."""

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class SourceState:
    """What a job computes once from its source image, then reuses for every driving frame."""

    features: Any  # the family's cache of what depends on the source alone
    kp_source: dict[str, torch.Tensor]
    precision: str = "fp32"
    mode: str = "relative"  # "relative", "absolute" or (TPSMM) "avd"
    adapt_scale: bool = True
    background_motion: bool = False
    kp_initial: dict[str, torch.Tensor] | None = None  # taken from the first frame when None

    @property
    def batch_key(self) -> tuple[str, str, bool, bool]:
        """What sources rendered in one batch must share: the networks and how motion is transferred."""
        return (self.precision, self.mode, self.adapt_scale, self.background_motion)


def frame_keypoints(kp: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """Frame `index`'s entries of a batched keypoint dict, as a batch of one."""
    return {k: v[index : index + 1] for k, v in kp.items()}


def joined_keypoints(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Keypoint dicts with the same keys, concatenated along the batch."""
    return {k: torch.cat([part[k] for part in parts]) for k in parts[0]}
