"""LivePortrait behind the pipeline.

Frames arrive at the model's output size (the published pipeline's 512 crops) and are resized to
the networks' input (256). Per job: the source's feature volume, kp_info, keypoints x_s and, with
the landmark model, its eye and lip ratios. Per batch of frames: the motion extractor (and the
landmarks), the published motion transfer for every frame at once, the warping module (float32
geometry) and the SPADE decoder (bf16/fp16 where asked).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from contract.options import AnimationOptions
from engine.families.adapter import Motion, SourceState, frame_keypoints
from engine.families.liveportrait.landmarks import LandmarkRunner
from engine.families.liveportrait.model import LivePortraitModel
from engine.families.liveportrait.motion import transfer_motion
from engine.families.liveportrait.precision import low_precision_decoder
from engine.layers.inference import PRECISIONS

REGION_NAMES = {"expression": "exp", "lips": "lip"}  # the contract's region names -> the published ones
KP_INFO = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")


@dataclass
class LivePortraitSource:
    """What depends on the source alone (batch of 1)."""

    feature_3d: torch.Tensor  # (1, C, D, h, w): the appearance feature volume f_s
    x_s: torch.Tensor  # (1, K, 3): the source's transformed keypoints


class LivePortraitAdapter:
    def __init__(self, model: LivePortraitModel, landmarks: LandmarkRunner | None = None):
        self.model = model  # prepared for inference (ModelFamily.prepare)
        self.landmarks = landmarks
        self._decoders = {"fp32": model.spade_generator}

    def decoder(self, precision: str) -> torch.nn.Module:
        """The SPADE decoder for a precision; a lowered copy is made on first use and kept."""
        if precision not in self._decoders:
            self._decoders[precision] = low_precision_decoder(
                self.model.spade_generator, PRECISIONS[precision]
            )
        return self._decoders[precision]

    def _input(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) frames at the networks' input size (area-averaged: 512 -> 256 is 2x2 means)."""
        if tuple(frames.shape[2:]) == self.model.input_shape:
            return frames
        return F.interpolate(frames.float(), size=self.model.input_shape, mode="area")

    def keypoints(self, frames: torch.Tensor) -> Motion:
        """kp_info (pitch, yaw, roll (N, 1) degrees; t (N, 3); exp, kp (N, K, 3); scale (N, 1)) and,
        with the landmark model, eye_ratio (N, 2) and lip_ratio (N, 1)."""
        info = self.model.get_kp_info(self._input(frames).float())
        motion = {key: info[key] for key in KP_INFO}
        if self.landmarks is not None:
            motion |= {k: v.to(frames.device) for k, v in self.landmarks.ratios(frames).items()}
        return motion

    def prepare_source(self, source: torch.Tensor, precision: str, options: AnimationOptions) -> SourceState:
        kp_source = self.keypoints(source)
        features = LivePortraitSource(
            feature_3d=self.model.extract_feature_3d(self._input(source).float()),
            x_s=self.model.transform_keypoint(kp_source),
        )
        return SourceState(features, kp_source, precision, options)

    def transfer(self, state: SourceState, kp_driving: Motion) -> torch.Tensor:
        """The driving keypoints x_d (N, K, 3) as the published animate loop computes them."""
        options, source = state.options, state.kp_source
        return transfer_motion(
            self.model,
            source,
            kp_driving,
            relative=options.mode == "relative",
            region=REGION_NAMES.get(options.region, options.region),
            stitching=options.stitching,
            multiplier=options.multiplier,
            driving_option=options.driving_option,
            eye_retargeting=options.eye_retargeting,
            lip_retargeting=options.lip_retargeting,
            normalize_lip=options.normalize_lips,
            source_eye_ratio=source.get("eye_ratio"),
            source_lip_ratio=source.get("lip_ratio"),
            driving_eye_ratios=kp_driving.get("eye_ratio"),
            driving_lip_ratios=kp_driving.get("lip_ratio"),
            driving_initial=state.kp_initial,
        )

    def animate(
        self, state: SourceState, frames: torch.Tensor, kp_driving: Motion
    ) -> dict[str, torch.Tensor]:
        features: LivePortraitSource = state.features
        return self._decode(
            state.precision, features.feature_3d, features.x_s, self.transfer(state, kp_driving)
        )

    def animate_sessions(
        self, states: list[SourceState], frames: torch.Tensor, kp_driving: Motion
    ) -> dict[str, torch.Tensor]:
        x_d = torch.cat(
            [self.transfer(state, frame_keypoints(kp_driving, i)) for i, state in enumerate(states)]
        )
        feature_3d = torch.cat([state.features.feature_3d for state in states])
        x_s = torch.cat([state.features.x_s for state in states])
        return self._decode(states[0].precision, feature_3d, x_s, x_d)

    def still(self, state: SourceState) -> dict[str, torch.Tensor]:
        """The source at rest: its own keypoints, stitched as every frame is."""
        features: LivePortraitSource = state.features
        x_s = features.x_s
        x_d = self.model.stitching(x_s, x_s) if state.options.stitching else x_s
        return self._decode(state.precision, features.feature_3d, x_s, x_d)

    def _decode(
        self, precision: str, feature_3d: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """warp_decode with the precision's decoder: the prediction (N, 3, H', W'). The deformation
        is a 3-D grid into the feature volume, not a 2-D one into the photo, so paste-back gets none
        (it then blends by the change against the still, feathered at the crop's inner sides)."""
        n = x_d.shape[0]
        feature_3d = feature_3d.expand(n, *feature_3d.shape[1:])
        warped = self.model.warping_module(
            feature_3d, kp_driving=x_d.float(), kp_source=x_s.expand(n, -1, -1)
        )
        return {"prediction": self.decoder(precision)(warped["out"])}
