"""The First Order Motion Model's networks that belong together, with the frame size they expect."""

from torch import nn

from engine.families.fomm.generator import Generator
from engine.families.fomm.keypoint_detector import KeypointDetector


class FirstOrderModel(nn.Module):
    """A keypoint detector and a generator that belong together, with the frame size they expect."""

    family = "fomm"
    modes = ("relative", "absolute")  # motion transfer modes (contract.options.Mode), the default first
    background_motion = False  # FOMM has no background motion predictor

    def __init__(self, kp_detector: KeypointDetector, generator: Generator, config: dict, frame_shape):
        super().__init__()
        self.kp_detector = kp_detector
        self.generator = generator
        self.config = config
        self.frame_shape = tuple(frame_shape)

    @property
    def num_kp(self) -> int:
        return self.config["common_params"]["num_kp"]
