"""The Thin-Plate Spline Motion Model behind the Renderer.

Per job: the source's keypoints, its downscaled copy and keypoint heatmaps for the dense motion
network, the inpainting encoder's features at every level and the source's half of the background
predictor's first convolution. Per batch of frames: keypoints, motion transfer, thin-plate splines,
the dense motion hourglass and the inpainting decoder.
"""

from dataclasses import dataclass

import torch

from contract.options import AnimationOptions
from engine.families.adapter import SourceState, frame_keypoints, joined_keypoints
from engine.families.tpsmm.dense_motion import DenseMotionNetwork
from engine.families.tpsmm.inpainting import InpaintingNetwork
from engine.families.tpsmm.model import TPSMModel
from engine.families.tpsmm.motion_transfer import relative_kp
from engine.families.tpsmm.precision import low_precision_tpsmm
from engine.layers.inference import PRECISIONS


@dataclass
class TpsmmSource:
    """What TPSMM's networks need from the source image; batch size 1, expanded per batch."""

    image: torch.Tensor  # (1, C, H, W)
    small: torch.Tensor  # (1, C, h, w): at the dense motion network's resolution
    heatmap: torch.Tensor  # (1, 5K, h, w): Gaussians around the source keypoints
    encoder_maps: list[torch.Tensor]  # the inpainting encoder's features, finest first
    background: torch.Tensor | None  # the background predictor's first convolution of the source

    def expand(self, n: int) -> "TpsmmSource":
        """The same source repeated to a batch of n frames, without copying memory."""

        def repeat(t: torch.Tensor) -> torch.Tensor:
            return t.expand(n, *t.shape[1:])

        background = None if self.background is None else repeat(self.background)
        maps = [repeat(m) for m in self.encoder_maps]
        return TpsmmSource(repeat(self.image), repeat(self.small), repeat(self.heatmap), maps, background)

    @staticmethod
    def joined(parts: list["TpsmmSource"]) -> "TpsmmSource":
        """Several sources as one batch, in order (one source per driving frame); they all have a
        background half or none does."""
        backgrounds = [p.background for p in parts]
        return TpsmmSource(
            torch.cat([p.image for p in parts]),
            torch.cat([p.small for p in parts]),
            torch.cat([p.heatmap for p in parts]),
            [torch.cat(level) for level in zip(*(p.encoder_maps for p in parts), strict=True)],
            None if backgrounds[0] is None else torch.cat(backgrounds),
        )


class TpsmmAdapter:
    def __init__(self, model: TPSMModel):
        self.model = model  # prepared for inference (ModelFamily.prepare)
        self._networks = {"fp32": (self.model.dense_motion_network, self.model.inpainting_network)}

    def networks(self, precision: str) -> tuple[DenseMotionNetwork, InpaintingNetwork]:
        """The dense motion and inpainting networks for a precision; lowered copies made on first use."""
        if precision not in self._networks:
            self._networks[precision] = low_precision_tpsmm(*self._networks["fp32"], PRECISIONS[precision])
        return self._networks[precision]

    def keypoints(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.kp_detector(frames)

    def prepare_source(self, source: torch.Tensor, precision: str, options: AnimationOptions) -> SourceState:
        kp_source = self.model.kp_detector(source)
        dense_motion, inpainting = self.networks(precision)
        small = dense_motion.downscale(source)
        features = TpsmmSource(
            image=source,
            small=small,
            heatmap=dense_motion.source_heatmap(kp_source, *small.shape[2:]),
            encoder_maps=inpainting.encode(source),
            background=self.model.bg_predictor.encode_source(source) if options.background_motion else None,
        )
        return SourceState(features, kp_source, precision, options)

    def transfer(
        self, state: SourceState, kp_source: dict[str, torch.Tensor], kp_driving: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The driving keypoints as the dense motion network should see them, by the job's mode."""
        if state.options.mode == "relative":
            return relative_kp(state.kp_source, kp_driving, state.kp_initial, state.options.adapt_scale)
        if state.options.mode == "avd":
            return self.model.avd_network(kp_source, kp_driving)
        return kp_driving

    def animate(
        self, state: SourceState, frames: torch.Tensor, kp_driving: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        n = frames.shape[0]
        source: TpsmmSource = state.features.expand(n)
        kp_source = {"fg_kp": state.kp_source["fg_kp"].expand(n, -1, -1)}
        bg_param = None
        if source.background is not None:
            bg_param = self.model.bg_predictor.predict(source.background, frames)
        return self._generate(state, source, self.transfer(state, kp_source, kp_driving), kp_source, bg_param)

    def animate_sessions(
        self, states: list[SourceState], frames: torch.Tensor, kp_driving: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        source = TpsmmSource.joined([state.features for state in states])
        sources = [{"fg_kp": state.kp_source["fg_kp"]} for state in states]
        kp_source = joined_keypoints(sources)
        transferred = joined_keypoints(
            [
                self.transfer(state, kp, frame_keypoints(kp_driving, i))
                for i, (state, kp) in enumerate(zip(states, sources, strict=True))
            ]
        )
        bg_param = None
        if source.background is not None:
            bg_param = self.model.bg_predictor.predict(source.background, frames)
        return self._generate(states[0], source, transferred, kp_source, bg_param)

    def still(self, state: SourceState) -> dict[str, torch.Tensor]:
        """The source driven by its own keypoints, background unmoved."""
        kp_source = {"fg_kp": state.kp_source["fg_kp"]}
        return self._generate(state, state.features, kp_source, kp_source, None)

    def _generate(
        self,
        state: SourceState,
        source: TpsmmSource,
        kp_driving: dict[str, torch.Tensor],
        kp_source: dict[str, torch.Tensor],
        bg_param: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """The prediction, the deformation and the finest occlusion mask (the one that chooses between
        the warped source and the in-painted pixels)."""
        dense_motion, inpainting = self.networks(state.precision)
        motion = dense_motion.predict(source.small, kp_driving, kp_source, bg_param, source.heatmap)
        out = inpainting.decode(source.image, source.encoder_maps, motion)
        return {
            "prediction": out["prediction"],
            "deformation": motion["deformation"],
            "occlusion_map": out["occlusion_map"][-1],
        }
