"""TPSMM split into graphs: keypoints, the source's features (once per job), the background motion
(per frame, models with a background predictor) and the frame graph.

The source graph computes what the torch adapter caches per job (engine/families/tpsmm/adapter.py): the
source at the dense motion network's size, the Gaussians around its keypoints and the inpainting
encoder's features at every level, plus the source's half of the background predictor's first
convolution. The frame graph holds the rest of the per-frame work: motion transfer (relative,
absolute or AVD, chosen by inputs), the thin-plate splines (fitted by `gauss_jordan_solve` while
traced), the dense motion network and the inpainting decoder. Background motion is its own graph,
a ResNet-18 on every driving frame, so that jobs without it do not pay for it: the frame graph
takes its affine matrices as an input, identity matrices for none (exactly the unmoved background).
"""

import numpy as np
import torch
from torch import nn

from engine.export.graphs import BATCH, Graph, GraphRunner, GraphSet, TensorSpec, source_output_shapes
from engine.families.adapter import SourceState
from engine.families.tpsmm.adapter import TpsmmSource
from engine.families.tpsmm.model import TPSMModel
from engine.layers.geometry import hull_scale

GRAPHS_VERSION = 3  # bump when the graphs below change: converted copies in caches become stale
# The frame graph's convolution stacks, as engine/layers/inference.py's low_precision_tpsmm lowers them.
FRAME_LOW_PRECISION_SCOPES = (
    "dense_motion_network.hourglass.encoder.down_blocks",
    "dense_motion_network.hourglass.decoder.up_blocks",
    "dense_motion_network.up",
    "dense_motion_network.occlusion",
    "inpainting_network.resblock",
    "inpainting_network.up_blocks",
    "inpainting_network.final",
)
SOURCE_LOW_PRECISION_SCOPES = ("inpainting_network.first", "inpainting_network.down_blocks")


def _encoder_names(model: TPSMModel) -> list[str]:
    """The inpainting encoder's levels as tensor names, finest first."""
    return [f"encoder_{i}" for i in range(model.inpainting_network.num_down_blocks + 1)]


class KeypointsGraph(nn.Module):
    """frames (N, C, H, W) -> keypoints (N, 5K, 2)."""

    def __init__(self, model: TPSMModel):
        super().__init__()
        self.kp_detector = model.kp_detector

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.kp_detector(frames)["fg_kp"]


class SourceGraph(nn.Module):
    """source (1, C, H, W) and its keypoints (1, 5K, 2) -> the source's share of every later step."""

    def __init__(self, model: TPSMModel):
        super().__init__()
        self.dense_motion_network = model.dense_motion_network
        self.inpainting_network = model.inpainting_network
        self.bg_predictor = model.bg_predictor

    def forward(self, source: torch.Tensor, kp_source: torch.Tensor) -> tuple[torch.Tensor, ...]:
        small = self.dense_motion_network.downscale(source)
        heatmap = self.dense_motion_network.source_heatmap({"fg_kp": kp_source}, *small.shape[2:])
        outputs = (small, heatmap, *self.inpainting_network.encode(source))
        if self.bg_predictor is not None:
            outputs += (self.bg_predictor.encode_source(source),)
        return outputs


class BackgroundGraph(nn.Module):
    """The source's background encoding (1, 64, H/2, W/2) and driving frames (N, C, H, W) ->
    affine background motion (N, 3, 3)."""

    def __init__(self, model: TPSMModel):
        super().__init__()
        self.bg_predictor = model.bg_predictor

    def forward(self, source_background: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        return self.bg_predictor.predict(source_background, frames)


class FrameGraph(nn.Module):
    """Inputs in `input_names` order; the source's tensors have batch 1 and are broadcast."""

    def __init__(self, model: TPSMModel, input_names: list[str], output_names: list[str]):
        super().__init__()
        self.dense_motion_network = model.dense_motion_network
        self.inpainting_network = model.inpainting_network
        self.avd_network = model.avd_network if "avd" in input_names else None
        self.input_names = input_names
        self.output_names = output_names
        self.encoder_names = _encoder_names(model)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.input_names, inputs, strict=True))
        kp_driving = named["kp_driving"]  # (N, 5K, 2)
        n = kp_driving.shape[0]
        kp_source = named["kp_source"].expand(n, -1, -1)

        def batch(t: torch.Tensor) -> torch.Tensor:
            return t.expand(n, *t.shape[1:])

        # As relative_kp: the driving displacement since the initial frame, scaled, on the source.
        moved = (kp_driving - named["kp_initial"]) * named["movement_scale"] + named["kp_source"]
        kp_norm = kp_driving
        if self.avd_network is not None:
            posed = self.avd_network({"fg_kp": kp_source}, {"fg_kp": kp_driving})["fg_kp"]
            kp_norm = torch.where(named["avd"], posed, kp_norm)
        kp_norm = torch.where(named["relative"], moved, kp_norm)
        motion = self.dense_motion_network.predict(
            batch(named["source_small"]),
            {"fg_kp": kp_norm},
            {"fg_kp": kp_source},
            named.get("bg_param"),
            batch(named["source_heatmap"]),
        )
        encoder_maps = [batch(named[name]) for name in self.encoder_names]
        out = self.inpainting_network.decode(batch(named["source"]), encoder_maps, motion)
        results = {
            "prediction": out["prediction"],
            "deformation": motion["deformation"],
            "occlusion_map": out["occlusion_map"][-1],
        }
        return tuple(results[name] for name in self.output_names)


def frame_feed(
    state: SourceState, kp_driving: dict[str, torch.Tensor], frames: torch.Tensor, run: GraphRunner
) -> dict[str, np.ndarray]:
    """The frame graph's inputs for a batch, from a job's SourceState (kp_initial set); with
    background motion, `run` runs the background graph on the batch's frames. `avd` and `bg_param`
    are there for every model; a frame graph without those inputs (no trained AVD network, no
    background predictor) leaves them unread."""
    source: TpsmmSource = state.features
    relative = state.options.mode == "relative"
    kp_source, kp_initial = state.kp_source["fg_kp"], state.kp_initial["fg_kp"]
    scale = hull_scale(kp_source[0], kp_initial[0]) if relative and state.options.adapt_scale else 1.0
    n = kp_driving["fg_kp"].shape[0]
    feed = {
        "kp_driving": kp_driving["fg_kp"].numpy(),
        "kp_source": kp_source.numpy(),
        "kp_initial": kp_initial.numpy(),
        "movement_scale": np.array([scale], dtype=np.float32),
        "relative": np.array([relative]),
        "avd": np.array([state.options.mode == "avd"]),
        "source": source.image.numpy(),
        "source_small": source.small.numpy(),
        "source_heatmap": source.heatmap.numpy(),
        **{f"encoder_{i}": level.numpy() for i, level in enumerate(source.encoder_maps)},
    }
    if state.options.background_motion:
        inputs = {"source_background": source.background.numpy(), "frames": frames.float().numpy()}
        feed["bg_param"] = run("background", inputs)["bg_param"]
    else:
        feed["bg_param"] = np.broadcast_to(np.eye(3, dtype=np.float32), (n, 3, 3))
    return feed


def source_feed(source: torch.Tensor, kp_source: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The source graph's inputs."""
    return {"source": source.numpy(), "kp_source": kp_source["fg_kp"].numpy()}


def source_features(outputs: dict[str, np.ndarray], source: torch.Tensor) -> TpsmmSource:
    """The torch adapter's per-job cache, from the source graph's outputs."""
    levels = [name for name in outputs if name.startswith("encoder_")]
    levels.sort(key=lambda name: int(name.removeprefix("encoder_")))
    background = outputs.get("source_background")
    return TpsmmSource(
        image=source,
        small=torch.from_numpy(outputs["source_small"]),
        heatmap=torch.from_numpy(outputs["source_heatmap"]),
        encoder_maps=[torch.from_numpy(outputs[name]) for name in levels],
        background=None if background is None else torch.from_numpy(background),
    )


def tpsmm_graphs(model: TPSMModel, source_shapes: list[tuple[int, ...]] | None = None) -> GraphSet:
    """The graphs of a TPSMM model; `model` should be prepared for inference (batch norm folded).
    `source_shapes`: the source graph's output shapes where known (a converted copy's manifest)."""
    h, w = model.frame_shape
    c = model.config["common_params"]["num_channels"]
    k = model.num_kp
    background = model.bg_predictor is not None
    avd = "avd" in model.modes
    encoder_names = _encoder_names(model)
    example = (torch.zeros(1, c, h, w), torch.zeros(1, k, 2))
    small, heatmap, *levels = source_output_shapes(SourceGraph(model), example, source_shapes)
    source_background = levels.pop() if background else None
    fh, fw = small[2:]
    frames = TensorSpec("frames", (BATCH, c, h, w), "float32", "RGB frames in [0, 1]")
    points = "(x, y) in [-1, 1], 5 control points per thin-plate spline"

    keypoints = Graph(
        "keypoints",
        KeypointsGraph(model),
        [frames],
        [TensorSpec("fg_kp", (BATCH, k, 2), "float32", f"keypoints: {points}")],
        "Keypoints of frames: the source once per job, the initial driving frame once, then every frame.",
    )
    source_outputs = [
        TensorSpec("source_small", small, "float32", "the source at the dense motion network's size"),
        TensorSpec("source_heatmap", heatmap, "float32", "Gaussians around the source keypoints"),
        *[
            TensorSpec(name, level, "float32", f"the inpainting encoder's level {i} (0: finest)")
            for i, (name, level) in enumerate(zip(encoder_names, levels, strict=True))
        ],
    ]
    if background:
        source_outputs.append(
            TensorSpec(
                "source_background",
                source_background,
                "float32",
                "the source's half of the background predictor's first convolution",
            )
        )
    source = Graph(
        "source",
        SourceGraph(model),
        [
            TensorSpec("source", (1, c, h, w), "float32", "the source image, RGB in [0, 1]"),
            TensorSpec("kp_source", (1, k, 2), "float32", "the source's keypoints"),
        ],
        source_outputs,
        "The source image's features, computed once per job.",
        SOURCE_LOW_PRECISION_SCOPES,
    )
    frame_inputs = [
        TensorSpec("kp_driving", (BATCH, k, 2), "float32", f"keypoints of the driving frames: {points}"),
        TensorSpec("kp_source", (1, k, 2), "float32", "keypoints of the source"),
        TensorSpec("kp_initial", (1, k, 2), "float32", "keypoints of the initial driving frame"),
        TensorSpec(
            "movement_scale", (1,), "float32", "relative mode: movement scale (1, or sqrt of hull areas)"
        ),
        TensorSpec("relative", (1,), "bool", "true: relative motion transfer"),
    ]
    if avd:
        frame_inputs.append(
            TensorSpec("avd", (1,), "bool", "with relative false: the AVD network's pose; false: absolute")
        )
    if background:
        frame_inputs.append(
            TensorSpec(
                "bg_param",
                (BATCH, 3, 3),
                "float32",
                "background motion from the background graph, or identity matrices for none",
            )
        )
    frame_inputs += [TensorSpec("source", (1, c, h, w), "float32", "the source image")]
    frame_inputs += [spec for spec in source_outputs if spec.name != "source_background"]
    frame_outputs = [
        TensorSpec("prediction", (BATCH, c, h, w), "float32", "animated frames in [0, 1]"),
        TensorSpec(
            "deformation",
            (BATCH, fh, fw, 2),
            "float32",
            "backward flow: where each output pixel samples the source, (x, y) in [-1, 1]",
        ),
        TensorSpec("occlusion_map", (BATCH, 1, h, w), "float32", "1 where the warped source is shown"),
    ]
    frame = Graph(
        "frame",
        FrameGraph(model, [spec.name for spec in frame_inputs], [spec.name for spec in frame_outputs]),
        frame_inputs,
        frame_outputs,
        "Per batch of driving frames: motion transfer, thin-plate splines, dense motion and inpainting.",
        FRAME_LOW_PRECISION_SCOPES,
    )
    graphs = {"keypoints": keypoints, "source": source}
    per_frame = ["kp_driving = keypoints(frames=driving batch)"]
    if background:
        graphs["background"] = Graph(
            "background",
            BackgroundGraph(model),
            [source_outputs[-1], frames],
            [TensorSpec("bg_param", (BATCH, 3, 3), "float32", "affine background motion, driving -> source")],
            "Per batch of driving frames, for background motion only: the background's affine motion.",
        )
        per_frame.append(
            "bg_param = background(source_background, frames=driving batch) for background motion, "
            "else identity matrices"
        )
    graphs["frame"] = frame
    modes = "relative, avd" if avd else "relative"
    per_frame.append(
        f"prediction, deformation, occlusion_map = frame(kp_driving, kp_source, kp_initial, movement_scale,"
        f" {modes}{', bg_param' if background else ''}, source, the source graph's outputs)"
    )
    return GraphSet(
        family="tpsmm",
        version=GRAPHS_VERSION,
        frame_shape=(h, w),
        graphs=graphs,
        once_per_job=[
            "kp_source = keypoints(frames=source)",
            f"{', '.join(spec.name for spec in source_outputs)} = source(source, kp_source)",
            "kp_initial = keypoints(frames=the initial driving frame: the first, or a chosen start)",
            "movement_scale = sqrt(hull area of kp_source / hull area of kp_initial) to adapt, else 1",
        ],
        per_frame=per_frame,
        frame_feed=frame_feed,
        source_feed=source_feed,
        source_features=source_features,
    )
