"""The First Order Motion Model behind the Renderer: source encoded once, keypoints in float32."""

import torch

from worker.adapters.state import SourceState
from worker.models import AnimationModel, Generator, normalize_kp
from worker.optimize import PRECISIONS, low_precision_generator, prepare_for_inference


class FommAdapter:
    def __init__(self, model: AnimationModel, device: str):
        self.model = prepare_for_inference(model, device)
        self._generators = {"fp32": self.model.generator}

    def generator(self, precision: str) -> Generator:
        """The generator for a precision; a lowered copy is made on first use and kept."""
        if precision not in self._generators:
            self._generators[precision] = low_precision_generator(self.model.generator, PRECISIONS[precision])
        return self._generators[precision]

    def keypoints(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.kp_detector(frames)

    def points(self, kp: dict[str, torch.Tensor]) -> torch.Tensor:
        return kp["value"]

    def prepare_source(
        self, source: torch.Tensor, precision: str, mode: str, adapt_scale: bool, background_motion: bool
    ) -> SourceState:
        kp_source = self.model.kp_detector(source)
        features = self.generator(precision).encode_source(source)
        return SourceState(features, kp_source, precision, mode, adapt_scale, background_motion)

    def animate(
        self, state: SourceState, frames: torch.Tensor, kp_driving: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        relative = state.mode == "relative"
        kp_norm = normalize_kp(
            state.kp_source,
            kp_driving,
            state.kp_initial,
            adapt_movement_scale=state.adapt_scale and relative,
            use_relative_movement=relative,
            use_relative_jacobian=relative,
        )
        n = frames.shape[0]
        kp_source = {k: v.expand(n, *v.shape[1:]) for k, v in state.kp_source.items()}
        generator = self.generator(state.precision)
        return generator.animate(state.features.expand(n), kp_source, kp_norm, maps=False)["prediction"]
