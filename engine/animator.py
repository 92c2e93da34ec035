"""The model facade: a loaded model, prepared for one runtime, animating frames one batch at a time.

Live sessions, the benchmarks and the tests call it frame by frame; the video pipeline
(engine/pipeline.py) streams whole videos through it. What differs between families is in their
adapters (engine/families/), what differs between runtimes in engine/runtimes/.
"""

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from contract.capabilities import ModelCapabilities, UnsupportedChoice, check_options
from contract.options import AnimationOptions
from engine.errors import RenderError
from engine.families import family_of
from engine.families.adapter import Motion, SourceState, frame_keypoints
from engine.frames import model_frames
from engine.runtimes import model_adapter
from engine.subject.paste import ModelFrame


class Animator:
    """Holds a loaded model, prepared for inference, and animates frames with it.

    It takes ownership of `model`: batch norm is folded into the convolutions and the weights are
    made channels-last, in place. `runtime` picks torch (any device), openvino (CPU; the model's
    graphs converted once into `cache_dir`, with `on_converted(graphs done, graphs)` meanwhile) or
    auto: the faster here at `precision` and `batch_size` (engine/runtimes/auto.py); `runtime`
    then names the one chosen and `runtime_choice` says why.
    """

    def __init__(
        self,
        model: nn.Module,
        device: str = "cpu",
        runtime: str = "torch",
        cache_dir: Path | None = None,
        on_converted: Callable[[int, int], None] | None = None,
        name: str = "model",
        precision: str = "fp32",
        batch_size: int = 1,
    ):
        self.family = family_of(model)
        self.adapter, self.runtime_choice = model_adapter(
            model, device, runtime, cache_dir, on_converted, precision, batch_size
        )
        self.model = self.adapter.model
        self.runtime = self.runtime_choice.runtime
        self.device = device
        self.name = name
        self.capabilities: ModelCapabilities = self.family.capabilities(self.model, name)

    def check_options(self, options: AnimationOptions) -> None:
        """RenderError (invalid_option) when the model cannot render with these options."""
        try:
            check_options(self.name, self.capabilities, options)
        except UnsupportedChoice as exc:
            raise RenderError(str(exc), "invalid_option") from None

    def check_precision(self, precision: str) -> None:
        """RenderError (invalid_option) when the model cannot run in `precision` on its runtime:
        int8 needs OpenVINO and the model's quantized graphs (`animate quantize`)."""
        check = getattr(self.adapter, "check_precision", None)
        if check is not None:
            check(precision)
        elif precision == "int8":
            raise RenderError("int8 runs on the openvino runtime (quantized graphs)", "invalid_option")

    def _input(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.to(self.device).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def keypoints(self, frames: torch.Tensor) -> Motion:
        """The motion the family reads off (N, 3, H, W) frames, always in float32."""
        return self.adapter.keypoints(self._input(frames))

    @torch.inference_mode()
    def prepare_source(
        self,
        source: torch.Tensor,
        precision: str = "fp32",
        options: AnimationOptions | None = None,
        **option_values,
    ) -> SourceState:
        """What the (1, 3, H, W) source in [0, 1] gives once per job, for `options` (or an
        AnimationOptions of `option_values`), checked against what the model offers.

        The driving frame that motion is measured from (`kp_initial`) is the first one animated,
        unless the caller sets it.
        """
        options = options or AnimationOptions(**option_values)
        self.check_options(options)
        self.check_precision(precision)
        return self.adapter.prepare_source(self._input(source), precision, options)

    @torch.inference_mode()
    def animate_with_motion(
        self, state: SourceState, frames: torch.Tensor, kp_driving: Motion | None = None
    ) -> dict[str, torch.Tensor]:
        """The adapter's output for driving frames (N, 3, H, W) in [0, 1]: `prediction` in [0, 1]
        and, for models with dense motion, `deformation` and `occlusion_map`.

        `kp_driving`: the frames' keypoints when an earlier pass over the video already has them.
        """
        frames = self._input(frames)
        if kp_driving is None:
            kp_driving = self.adapter.keypoints(frames)
        if state.kp_initial is None:
            state.kp_initial = frame_keypoints(kp_driving, 0)
        return self.adapter.animate(state, frames, kp_driving)

    @torch.inference_mode()
    def animate_batch(
        self, state: SourceState, frames: torch.Tensor, kp_driving: Motion | None = None
    ) -> torch.Tensor:
        """Animated frames for driving frames (N, 3, H, W) in [0, 1]."""
        return self.animate_with_motion(state, frames, kp_driving)["prediction"]

    @torch.inference_mode()
    def animate_sessions(self, states: list[SourceState], frames: torch.Tensor) -> torch.Tensor:
        """One driving frame for each of several sources, as one batch: frames[i] (3, H, W) in [0, 1]
        animates states[i]. Live sessions share the model this way (worker/live_batcher.py). The
        states must share a batch key (precision and motion options)."""
        if len(states) == 1:
            return self.animate_batch(states[0], frames)
        if len({state.batch_key for state in states}) != 1:
            raise ValueError("sessions batched together must share precision, mode and options")
        frames = self._input(frames)
        kp_driving = self.adapter.keypoints(frames)
        for i, state in enumerate(states):
            if state.kp_initial is None:
                state.kp_initial = frame_keypoints(kp_driving, i)
        return self.adapter.animate_sessions(states, frames, kp_driving)["prediction"]

    @torch.inference_mode()
    def still(self, state: SourceState) -> ModelFrame:
        """The source rendered with no motion: what paste-back compares every frame with."""
        return model_frames(self.adapter.still(state))[0]

    def pose(self, kp: Motion) -> torch.Tensor:
        """(N, D) pose vectors of a motion dict: nearer is more alike."""
        return self.family.pose(kp)
