"""Per-family model adapters: what the Renderer asks of a loaded model, FOMM or TPSMM.

The Renderer streams frames and batches them; an adapter prepares its model for inference, caches
what depends on the source alone (`prepare_source`), and turns a batch of driving frames into
animated frames with the motion that made them (`animate`), each family in its own module.
"""

from typing import Protocol

import torch
from torch import nn

from worker.adapters.state import SourceState


class ModelAdapter(Protocol):
    model: nn.Module  # prepared for inference: eval mode, batch norm folded, channels-last

    def keypoints(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """The keypoint detector's output for (N, 3, H, W) frames, in float32."""

    def points(self, kp: dict[str, torch.Tensor]) -> torch.Tensor:
        """The (N, K, 2) keypoint positions in a detector output."""

    def prepare_source(
        self, source: torch.Tensor, precision: str, mode: str, adapt_scale: bool, background_motion: bool
    ) -> SourceState:
        """Everything that depends on the (1, 3, H, W) source alone."""

    def animate(
        self, state: SourceState, frames: torch.Tensor, kp_driving: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """For driving frames (N, 3, H, W) and their keypoints: `prediction`, the animated frames
        (N, 3, H, W), and, where the model has them, the motion paste-back moves the photo by:
        `deformation` (N, h, w, 2), a grid into the source, and `occlusion_map` (N, 1, h, w), 1 where
        the warped source is shown."""

    def animate_sessions(
        self, states: list[SourceState], frames: torch.Tensor, kp_driving: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """`animate` for several sources at once: frames[i] and its keypoints drive states[i], as one
        batch. The states share precision, mode, scale adaptation and background motion, and each
        has its `kp_initial`. The same outputs as `animate`, row i for states[i]."""

    def still(self, state: SourceState) -> dict[str, torch.Tensor]:
        """`animate`'s output for the source itself with no motion (batch of 1): what paste-back
        compares every frame with."""


def model_adapter(model: nn.Module, device: str) -> ModelAdapter:
    """The adapter for `model`'s family; it takes ownership of the model (prepared in place)."""
    from worker.adapters.fomm import FommAdapter
    from worker.adapters.tpsmm import TpsmmAdapter

    adapters = {"fomm": FommAdapter, "tpsmm": TpsmmAdapter}
    return adapters[model.family](model, device)


__all__ = ["ModelAdapter", "SourceState", "model_adapter"]
