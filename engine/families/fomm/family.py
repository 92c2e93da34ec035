"""The First Order Motion Model (Siarohin et al., NeurIPS 2019) as the engine serves it."""

from pathlib import Path

import torch
from torch import nn

from engine.checkpoints import Checkpoint
from engine.families.adapter import Motion
from engine.families.family import ModelFamily
from engine.families.fomm.adapter import FommAdapter
from engine.families.fomm.checkpoint import PARTS, load_model
from engine.layers.geometry import normalized_arrangement


class Fomm(ModelFamily):
    name = "fomm"
    title = "First Order Motion Model"

    def recognises(self, checkpoint: Checkpoint) -> bool:
        return checkpoint.has_any(PARTS)

    def load(self, checkpoint: Checkpoint, config: dict | str | Path | None) -> nn.Module:
        return load_model(checkpoint, config)

    def adapter(self, model: nn.Module, device: str) -> FommAdapter:
        return FommAdapter(self.prepare(model, device))

    def pose(self, kp: Motion) -> torch.Tensor:
        return normalized_arrangement(kp["value"])

    def modes(self, model: nn.Module) -> tuple[str, ...]:
        return model.modes

    def options(self, model: nn.Module) -> tuple[str, ...]:
        return ("adapt_scale",)

    def reconstructor(self, model: nn.Module, device: str):
        """Absolute keypoints (no relative motion transfer): the driving frame's own keypoints."""

        @torch.inference_mode()
        def reconstruct(source: torch.Tensor, driving: torch.Tensor) -> torch.Tensor:
            source, driving = source.to(device), driving.to(device)
            n = driving.shape[0]
            kp_source = {k: v.expand(n, *v.shape[1:]) for k, v in model.kp_detector(source).items()}
            features = model.generator.encode_source(source).expand(n)
            kp_driving = model.kp_detector(driving)
            return model.generator.animate(features, kp_source, kp_driving, maps=False)["prediction"]

        return reconstruct

    def graphs(self, model: nn.Module, source_shapes: list[tuple[int, ...]] | None = None):
        from engine.families.fomm.export import fomm_graphs

        return fomm_graphs(model, source_shapes)
