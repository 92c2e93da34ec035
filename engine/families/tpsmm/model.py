"""The TPSMM networks that belong together, with what a renderer needs to know about them."""

import math

from torch import nn

from engine.families.tpsmm.avd import AVDNetwork
from engine.families.tpsmm.background import BackgroundMotionPredictor
from engine.families.tpsmm.dense_motion import DenseMotionNetwork
from engine.families.tpsmm.inpainting import InpaintingNetwork
from engine.families.tpsmm.keypoint_detector import POINTS_PER_TPS, KeypointDetector


class TPSMModel(nn.Module):
    """Keypoint detector, dense motion and inpainting networks, and the optional AVD network and
    background predictor, under their published checkpoint names.

    `avd_trained`: whether the AVD network has been trained (its batch norms have seen batches);
    an untrained one would map every pose through random weights, so "avd" is offered only then.
    """

    family = "tpsmm"

    def __init__(
        self,
        kp_detector: KeypointDetector,
        dense_motion_network: DenseMotionNetwork,
        inpainting_network: InpaintingNetwork,
        avd_network: AVDNetwork | None,
        bg_predictor: BackgroundMotionPredictor | None,
        config: dict,
        frame_shape,
        avd_trained: bool = True,
    ):
        super().__init__()
        self.kp_detector = kp_detector
        self.dense_motion_network = dense_motion_network
        self.inpainting_network = inpainting_network
        self.avd_network = avd_network
        self.bg_predictor = bg_predictor
        self.config = config
        self.frame_shape = tuple(frame_shape)
        self.avd_trained = avd_network is not None and avd_trained

    @property
    def num_tps(self) -> int:
        return self.config["common_params"]["num_tps"]

    @property
    def num_kp(self) -> int:
        """Keypoints per frame: 5 control points per thin-plate spline."""
        return POINTS_PER_TPS * self.num_tps

    @property
    def modes(self) -> tuple[str, ...]:
        """Motion transfer modes, the default first; "absolute" is the published "standard"."""
        return ("relative", "absolute", "avd") if self.avd_trained else ("relative", "absolute")

    @property
    def background_motion(self) -> bool:
        """Whether the background's affine motion can be predicted (the file has a predictor)."""
        return self.bg_predictor is not None

    @property
    def size_multiple(self) -> int:
        """Frame sides must be multiples of this: the encoders halve the size level by level."""
        dense = self.config["dense_motion_params"]
        motion = round(1 / dense["scale_factor"]) * 2 ** dense["num_blocks"]
        return math.lcm(motion, 2 ** self.config["generator_params"]["num_down_blocks"])
