"""The First Order Motion Model behind the pipeline: source encoded once, keypoints in float32."""

import torch

from contract.options import AnimationOptions
from engine.families.adapter import Motion, SourceState, frame_keypoints, joined_keypoints
from engine.families.fomm.generator import Generator, SourceFeatures
from engine.families.fomm.model import FirstOrderModel
from engine.families.fomm.motion_transfer import normalize_kp
from engine.families.fomm.precision import low_precision_generator
from engine.layers.inference import PRECISIONS


class FommAdapter:
    def __init__(self, model: FirstOrderModel):
        self.model = model  # prepared for inference (ModelFamily.prepare)
        self._generators = {"fp32": self.model.generator}

    def generator(self, precision: str) -> Generator:
        """The generator for a precision; a lowered copy is made on first use and kept."""
        if precision not in self._generators:
            self._generators[precision] = low_precision_generator(self.model.generator, PRECISIONS[precision])
        return self._generators[precision]

    def keypoints(self, frames: torch.Tensor) -> Motion:
        return self.model.kp_detector(frames)

    def prepare_source(self, source: torch.Tensor, precision: str, options: AnimationOptions) -> SourceState:
        kp_source = self.model.kp_detector(source)
        features = self.generator(precision).encode_source(source)
        return SourceState(features, kp_source, precision, options)

    def animate(
        self, state: SourceState, frames: torch.Tensor, kp_driving: Motion
    ) -> dict[str, torch.Tensor]:
        return self._generate(state, self._transfer(state, kp_driving))

    def animate_sessions(
        self, states: list[SourceState], frames: torch.Tensor, kp_driving: Motion
    ) -> dict[str, torch.Tensor]:
        kp_norm = joined_keypoints(
            [self._transfer(state, frame_keypoints(kp_driving, i)) for i, state in enumerate(states)]
        )
        kp_source = joined_keypoints([state.kp_source for state in states])
        features = SourceFeatures.joined([state.features for state in states])
        return self._outputs(
            self.generator(states[0].precision).animate(features, kp_source, kp_norm, maps=False)
        )

    def still(self, state: SourceState) -> dict[str, torch.Tensor]:
        return self._generate(state, state.kp_source)

    def _transfer(self, state: SourceState, kp_driving: Motion) -> Motion:
        """The driving keypoints as the generator should see them, by the job's mode."""
        relative = state.options.mode == "relative"
        return normalize_kp(
            state.kp_source,
            kp_driving,
            state.kp_initial,
            adapt_movement_scale=state.options.adapt_scale and relative,
            use_relative_movement=relative,
            use_relative_jacobian=relative,
        )

    def _generate(self, state: SourceState, kp_norm: Motion) -> dict[str, torch.Tensor]:
        """The generator's outputs for one source and a batch of driving keypoints."""
        n = kp_norm["value"].shape[0]
        kp_source = {k: v.expand(n, *v.shape[1:]) for k, v in state.kp_source.items()}
        generator = self.generator(state.precision)
        return self._outputs(generator.animate(state.features.expand(n), kp_source, kp_norm, maps=False))

    @staticmethod
    def _outputs(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The prediction and, with a dense motion network, its deformation and occlusion."""
        return {key: out[key] for key in ("prediction", "deformation", "occlusion_map") if key in out}
