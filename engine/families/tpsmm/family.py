"""The Thin-Plate Spline Motion Model (Zhao and Zhang, CVPR 2022) as the engine serves it."""

from pathlib import Path

import torch
from torch import nn

from engine.checkpoints import Checkpoint, stored_frame_shape
from engine.families.adapter import Motion
from engine.families.family import ModelFamily
from engine.families.tpsmm.adapter import TpsmmAdapter
from engine.families.tpsmm.checkpoint import OPTIONAL_PARTS, REQUIRED_PARTS, load_model
from engine.families.tpsmm.fusion import prepare_tpsmm
from engine.layers.geometry import normalized_arrangement

DISTINCTIVE_PARTS = ("inpainting_network", "dense_motion_network")  # not nested in a generator


class Tpsmm(ModelFamily):
    name = "tpsmm"
    title = "Thin-Plate Spline Motion Model"

    def recognises(self, checkpoint: Checkpoint) -> bool:
        return checkpoint.has_any(DISTINCTIVE_PARTS)

    def load(self, checkpoint: Checkpoint, config: dict | str | Path | None) -> nn.Module:
        """The architecture is read off the tensors entirely; `config` may only give the frame size."""
        parts = checkpoint.parts(REQUIRED_PARTS, OPTIONAL_PARTS)
        return load_model(parts, stored_frame_shape(checkpoint, config))

    def prepare(self, model: nn.Module, device: str) -> nn.Module:
        return prepare_tpsmm(model, device)

    def adapter(self, model: nn.Module, device: str) -> TpsmmAdapter:
        return TpsmmAdapter(self.prepare(model, device))

    def pose(self, kp: Motion) -> torch.Tensor:
        return normalized_arrangement(kp["fg_kp"])

    def modes(self, model: nn.Module) -> tuple[str, ...]:
        return model.modes

    def options(self, model: nn.Module) -> tuple[str, ...]:
        return ("adapt_scale", "background_motion") if model.background_motion else ("adapt_scale",)

    def report(self, model: nn.Module) -> dict:
        return {
            **super().report(model),
            "num_tps": model.num_tps,
            "background_predictor": model.background_motion,
        }

    def graphs(self, model: nn.Module, source_shapes: list[tuple[int, ...]] | None = None):
        from engine.families.tpsmm.export import tpsmm_graphs

        return tpsmm_graphs(model, source_shapes)
