"""FOMM split into three graphs: keypoints, the source encoder (once per job) and the frame graph.

The frame graph holds everything the Renderer does per driving frame after its keypoints: motion
transfer (relative or absolute, chosen by an input), dense motion and the generator, with the
source's features as inputs. Keypoints are their own graph because the same detector serves the
source, the initial driving frame and every driving frame, always in float32.
"""

import numpy as np
import torch
from torch import nn

from engine.export.graphs import BATCH, Graph, GraphRunner, GraphSet, TensorSpec, source_output_shapes
from engine.families.adapter import SourceState
from engine.families.fomm.generator import SourceFeatures
from engine.families.fomm.model import FirstOrderModel
from engine.families.fomm.motion_transfer import movement_scale, relative_motion
from engine.families.fomm.precision import FRAME_LOW_PRECISION_SCOPES, SOURCE_LOW_PRECISION_SCOPES

GRAPHS_VERSION = 2  # bump when the graphs below change: converted copies in caches become stale


class KeypointsGraph(nn.Module):
    """frames (N, C, H, W) -> keypoints (N, K, 2) [and jacobians (N, K, 2, 2)]."""

    def __init__(self, model: FirstOrderModel):
        super().__init__()
        self.kp_detector = model.kp_detector

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kp = self.kp_detector(frames)
        return (kp["value"], kp["jacobian"]) if "jacobian" in kp else (kp["value"],)


class SourceGraph(nn.Module):
    """source (1, C, H, W) -> the generator's encoding and the dense-motion-size source."""

    def __init__(self, model: FirstOrderModel):
        super().__init__()
        self.generator = model.generator

    def forward(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.generator.encode_source(source)
        return features.encoded, features.small


class FrameGraph(nn.Module):
    """Inputs in `input_names` order; the source's tensors have batch 1 and are broadcast."""

    def __init__(self, model: FirstOrderModel, input_names: list[str], output_names: list[str]):
        super().__init__()
        self.generator = model.generator
        self.input_names = input_names
        self.output_names = output_names
        self.jacobian = "kp_driving_jacobian" in input_names

    def _keypoints(self, named: dict[str, torch.Tensor], prefix: str, n: int) -> dict[str, torch.Tensor]:
        kp = {"value": named[prefix].expand(n, -1, -1)}
        if self.jacobian:
            kp["jacobian"] = named[f"{prefix}_jacobian"].expand(n, -1, -1, -1)
        return kp

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.input_names, inputs, strict=True))
        n = named["kp_driving"].shape[0]
        kp_driving = self._keypoints(named, "kp_driving", n)
        kp_source = self._keypoints(named, "kp_source", n)
        moved = relative_motion(
            kp_source, kp_driving, self._keypoints(named, "kp_initial", n), named["movement_scale"]
        )
        kp_norm = {key: torch.where(named["relative"], moved[key], kp_driving[key]) for key in kp_driving}
        encoded, small = named["source_encoded"], named["source_small"]
        features = SourceFeatures(None, encoded.expand(n, -1, -1, -1), small.expand(n, -1, -1, -1))
        out = self.generator.animate(features, kp_source, kp_norm, maps=False)
        return tuple(out[name] for name in self.output_names)


def _numpy_keypoints(kp: dict[str, torch.Tensor], prefix: str) -> dict[str, np.ndarray]:
    out = {prefix: kp["value"].numpy()}
    if "jacobian" in kp:
        out[f"{prefix}_jacobian"] = kp["jacobian"].numpy()
    return out


def frame_feed(
    state: SourceState, kp_driving: dict[str, torch.Tensor], frames: torch.Tensor, run: GraphRunner
) -> dict[str, np.ndarray]:
    """The frame graph's inputs for a batch, from a job's SourceState (kp_initial set); FOMM's frame
    graph needs neither the frames nor another graph."""
    relative = state.options.mode == "relative"
    scale = (
        movement_scale(state.kp_source, state.kp_initial) if relative and state.options.adapt_scale else 1.0
    )
    return {
        **_numpy_keypoints(kp_driving, "kp_driving"),
        **_numpy_keypoints(state.kp_source, "kp_source"),
        **_numpy_keypoints(state.kp_initial, "kp_initial"),
        "movement_scale": np.array([scale], dtype=np.float32),
        "relative": np.array([relative]),
        "source_encoded": state.features.encoded.numpy(),
        "source_small": state.features.small.numpy(),
    }


def source_feed(source: torch.Tensor, kp_source: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The source graph's inputs: the image alone."""
    return {"source": source.numpy()}


def source_features(outputs: dict[str, np.ndarray], source: torch.Tensor) -> SourceFeatures:
    """SourceFeatures from the source graph's outputs."""
    return SourceFeatures(
        source, torch.from_numpy(outputs["source_encoded"]), torch.from_numpy(outputs["source_small"])
    )


def _keypoint_specs(prefix: str, batch: int | str, k: int, jacobian: bool, what: str) -> list[TensorSpec]:
    specs = [TensorSpec(prefix, (batch, k, 2), "float32", f"{what}: (x, y) in [-1, 1]")]
    if jacobian:
        specs.append(TensorSpec(f"{prefix}_jacobian", (batch, k, 2, 2), "float32", f"{what}: jacobians"))
    return specs


def fomm_graphs(model: FirstOrderModel, source_shapes: list[tuple[int, ...]] | None = None) -> GraphSet:
    """The three graphs of a FOMM model; `model` should be prepared for inference (batch norm folded).
    `source_shapes`: the source graph's output shapes where known (a converted copy's manifest)."""
    h, w = model.frame_shape
    c = model.config["common_params"]["num_channels"]
    k = model.num_kp
    jacobian = model.kp_detector.num_jacobian_maps > 0
    encoded, small = source_output_shapes(SourceGraph(model), (torch.zeros(1, c, h, w),), source_shapes)
    generator = model.generator
    frames = TensorSpec("frames", (BATCH, c, h, w), "float32", "RGB frames in [0, 1]")
    keypoints = Graph(
        "keypoints",
        KeypointsGraph(model),
        [frames],
        [
            TensorSpec("value", (BATCH, k, 2), "float32", "keypoints: (x, y) in [-1, 1]"),
            *([TensorSpec("jacobian", (BATCH, k, 2, 2), "float32", "their jacobians")] if jacobian else []),
        ],
        "Keypoints of frames: the source once per job, the initial driving frame once, then every frame.",
    )
    source = Graph(
        "source",
        SourceGraph(model),
        [TensorSpec("source", (1, c, h, w), "float32", "the source image, RGB in [0, 1]")],
        [
            TensorSpec("source_encoded", encoded, "float32", "the generator's encoding"),
            TensorSpec("source_small", small, "float32", "the source at dense-motion size"),
        ],
        "The source image's features, computed once per job.",
        SOURCE_LOW_PRECISION_SCOPES,
    )
    frame_inputs = [
        *_keypoint_specs("kp_driving", BATCH, k, jacobian, "keypoints of the driving frames"),
        *_keypoint_specs("kp_source", 1, k, jacobian, "keypoints of the source"),
        *_keypoint_specs("kp_initial", 1, k, jacobian, "keypoints of the initial driving frame"),
        TensorSpec(
            "movement_scale", (1,), "float32", "relative mode: movement scale (1, or sqrt of hull areas)"
        ),
        TensorSpec("relative", (1,), "bool", "true: relative motion transfer; false: absolute"),
        TensorSpec("source_encoded", encoded, "float32", "from the source graph"),
        TensorSpec("source_small", small, "float32", "from the source graph"),
    ]
    frame_outputs = [TensorSpec("prediction", (BATCH, c, h, w), "float32", "animated frames in [0, 1]")]
    if generator.dense_motion_network is not None:
        fh, fw = small[2:]
        frame_outputs.append(
            TensorSpec(
                "deformation",
                (BATCH, fh, fw, 2),
                "float32",
                "backward flow: where each output pixel samples the source, (x, y) in [-1, 1]",
            )
        )
        if generator.dense_motion_network.occlusion is not None:
            frame_outputs.append(
                TensorSpec(
                    "occlusion_map", (BATCH, 1, fh, fw), "float32", "1 where the warped source is shown"
                )
            )
    frame = Graph(
        "frame",
        FrameGraph(model, [spec.name for spec in frame_inputs], [spec.name for spec in frame_outputs]),
        frame_inputs,
        frame_outputs,
        "Per batch of driving frames: motion transfer, dense motion and the generator.",
        FRAME_LOW_PRECISION_SCOPES,  # the dense motion network, which makes the flows, stays float32
    )
    return GraphSet(
        family="fomm",
        version=GRAPHS_VERSION,
        frame_shape=(h, w),
        graphs={"keypoints": keypoints, "source": source, "frame": frame},
        once_per_job=[
            "kp_source = keypoints(frames=source)",
            "source_encoded, source_small = source(source=source)",
            "kp_initial = keypoints(frames=the initial driving frame: the first, or a chosen start)",
            "movement_scale = sqrt(hull area of kp_source / hull area of kp_initial) to adapt, else 1",
        ],
        per_frame=[
            "kp_driving = keypoints(frames=driving batch)",
            "prediction, deformation, occlusion_map = frame(kp_driving, kp_source, kp_initial,"
            " movement_scale, relative, source_encoded, source_small)",
        ],
        frame_feed=frame_feed,
        source_feed=source_feed,
        source_features=source_features,
    )
