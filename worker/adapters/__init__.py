"""Per-family model adapters: what the Renderer asks of a loaded model, FOMM or TPSMM.

The Renderer streams frames and batches them; an adapter prepares its model for inference, caches
what depends on the source alone (`prepare_source`), and turns a batch of driving frames into
animated frames (`animate`), each family in its own module.
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
    ) -> torch.Tensor:
        """Animated frames (N, 3, H, W) for driving frames (N, 3, H, W) and their keypoints."""


def model_adapter(model: nn.Module, device: str) -> ModelAdapter:
    """The adapter for `model`'s family; it takes ownership of the model (prepared in place)."""
    from worker.adapters.fomm import FommAdapter
    from worker.adapters.tpsmm import TpsmmAdapter

    adapters = {"fomm": FommAdapter, "tpsmm": TpsmmAdapter}
    return adapters[model.family](model, device)


__all__ = ["ModelAdapter", "SourceState", "model_adapter"]
