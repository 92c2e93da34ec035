"""What the rendering pipeline asks of a loaded model, whatever its family.

The pipeline streams frames and batches them; an adapter prepares its model for inference, caches
what depends on the source alone (`prepare_source`), and turns a batch of driving frames into
animated frames with the motion that made them (`animate`). What a family's keypoints are (2-D
points, splines' control points, 3-D implicit keypoints with a head pose) is the adapter's own
business: the pipeline only passes them back and slices them by frame; the family's `pose`
compares them.
"""

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from contract.options import AnimationOptions

Motion = dict[str, torch.Tensor]  # a family's per-frame motion description, every entry batched on dim 0


@dataclass
class SourceState:
    """What a job computes once from its source image, then reuses for every driving frame."""

    features: Any  # the family's cache of what depends on the source alone
    kp_source: Motion
    precision: str = "fp32"
    options: AnimationOptions = AnimationOptions()
    kp_initial: Motion | None = None  # the driving frame motion is measured from; the first when None

    @property
    def batch_key(self) -> tuple:
        """What sources rendered in one batch must share: the networks and how motion is transferred."""
        return (self.precision, self.options.motion())


class ModelAdapter(Protocol):
    model: nn.Module  # prepared for inference: eval mode, batch norm folded, channels-last

    def keypoints(self, frames: torch.Tensor) -> Motion:
        """The motion the family reads off (N, 3, H, W) frames, in float32."""

    def prepare_source(self, source: torch.Tensor, precision: str, options: AnimationOptions) -> SourceState:
        """Everything that depends on the (1, 3, H, W) source alone."""

    def animate(
        self, state: SourceState, frames: torch.Tensor, kp_driving: Motion
    ) -> dict[str, torch.Tensor]:
        """For driving frames (N, 3, H, W) and their keypoints: `prediction`, the animated frames
        (N, 3, H', W'), and, where the model has them, the motion paste-back moves the photo by:
        `deformation` (N, h, w, 2), a grid into the source, and `occlusion_map` (N, 1, h, w), 1 where
        the warped source is shown."""

    def animate_sessions(
        self, states: list[SourceState], frames: torch.Tensor, kp_driving: Motion
    ) -> dict[str, torch.Tensor]:
        """`animate` for several sources at once: frames[i] and its keypoints drive states[i], as one
        batch. The states share a `batch_key`, and each has its `kp_initial`. The same outputs as
        `animate`, row i for states[i]."""

    def still(self, state: SourceState) -> dict[str, torch.Tensor]:
        """`animate`'s output for the source itself with no motion (batch of 1): what paste-back
        compares every frame with."""


def frame_keypoints(kp: Motion, index: int) -> Motion:
    """Frame `index`'s entries of a batched motion dict, as a batch of one."""
    return {k: v[index : index + 1] for k, v in kp.items()}


def frame_range(kp: Motion, start: int, stop: int, step: int = 1) -> Motion:
    """Frames start, start + step, ... before stop of a batched motion dict."""
    return {k: v[start:stop:step] for k, v in kp.items()}


def joined_keypoints(parts: list[Motion]) -> Motion:
    """Motion dicts with the same keys, concatenated along the batch."""
    return {k: torch.cat([part[k] for part in parts]) for k in parts[0]}


def motion_frames(kp: Motion) -> int:
    """How many frames a batched motion dict describes."""
    return len(next(iter(kp.values())))
