"""The OpenVINO runtime for CPU workers (RUNTIME=openvino, `animate render --runtime openvino`): a
model adapter for the Renderer.

The model's graphs (worker/export) are converted once and cached on disk, keyed by the model's
content, the OpenVINO version, the family's graph version and the frame size; later loads read the
cached IR. Each graph is compiled on first use for the batch size asked, and a smaller batch (the
last of a video) is padded up to a size already compiled rather than compiling another.
"""

import hashlib
import json
import logging
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from contract.options import AnimationOptions
from engine.errors import RenderError
from engine.export import BATCH, GraphSet
from engine.export.files import MANIFEST, ConversionCallback, export_graphs
from engine.export.openvino_ir import OPENVINO_PRECISIONS, compile_graph, cpu_has_bf16, import_openvino
from engine.families.adapter import SourceState
from engine.families.family import ModelFamily

log = logging.getLogger("worker")


def model_digest(model: nn.Module) -> str:
    """sha256 of the model as loaded (before folding and fusing): every tensor, the config and the
    frame size."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(model.config, sort_keys=True).encode())
    digest.update(json.dumps(list(model.frame_shape)).encode())
    return digest.hexdigest()


def cache_entry(cache_dir: Path, graphs: GraphSet, digest: str) -> Path:
    """The folder of one model's converted graphs."""
    h, w = graphs.frame_shape
    key = (
        f"{digest} {import_openvino().get_version()} {graphs.family} v{graphs.version} {h}x{w} batch-dynamic"
    )
    return cache_dir / f"{graphs.family}-{hashlib.sha256(key.encode()).hexdigest()[:20]}"


class OpenVinoGraphs:
    """A model's graphs read from the cache (converted first when missing), compiled on demand."""

    def __init__(self, graphs: GraphSet, folder: Path, cache_hit: bool):
        ov = import_openvino()
        self.graph_set = graphs
        self.folder = folder
        self.cache_hit = cache_hit
        self.core = ov.Core()
        self.models = {name: self.core.read_model(str(folder / f"{name}.xml")) for name in graphs.graphs}
        self.compiled: dict[tuple[str, str, int], object] = {}
        self.lock = threading.Lock()

    @classmethod
    def load(
        cls,
        model: nn.Module,
        family: ModelFamily,
        cache_dir: Path,
        on_converted: ConversionCallback | None = None,
    ) -> "OpenVinoGraphs":
        """The model's graphs, from the cache when it has them. `model` is as loaded: it is prepared
        for inference (folded and fused, a second or two for a vox-256 model) only to be converted."""
        model.eval()
        digest = model_digest(model)
        graphs = family.graphs(model)  # the graphs' names, shapes and scopes are those of the prepared model
        folder = cache_entry(Path(cache_dir), graphs, digest)
        if (folder / MANIFEST).is_file():
            return cls(graphs, folder, cache_hit=True)
        graphs = family.graphs(family.prepare(model, "cpu"))
        folder.parent.mkdir(parents=True, exist_ok=True)
        log.info("converting %s graphs for OpenVINO into %s", graphs.family, folder)
        try:
            export_graphs(
                graphs, folder, "openvino", checkpoint={"tensors_sha256": digest}, on_converted=on_converted
            )
        except OSError:
            if not (folder / MANIFEST).is_file():  # else another worker converted it at the same time
                raise
        return cls(graphs, folder, cache_hit=False)

    def _compiled(self, name: str, precision: str, n: int) -> tuple[object, int]:
        """A compiled model for batch n or the smallest larger size compiled already, and that size."""
        with self.lock:
            sizes = sorted(
                size for (g, p, size) in self.compiled if (g, p) == (name, precision) and size >= n
            )
            size = sizes[0] if sizes else n
            if (name, precision, size) not in self.compiled:
                graph = self.graph_set.graphs[name]
                cache = self.folder / "compiled"
                model = self.models[name].clone()
                self.compiled[name, precision, size] = compile_graph(
                    self.core, model, graph, size, precision, cache
                )
            return self.compiled[name, precision, size], size

    def run(self, name: str, inputs: dict[str, np.ndarray], precision: str = "fp32") -> dict[str, np.ndarray]:
        """Outputs of graph `name` by output name; batch-dimension inputs are padded as needed. A graph
        without low-precision scopes (keypoints, background motion) runs in float32 whatever is asked."""
        graph = self.graph_set.graphs[name]
        precision = precision if graph.low_precision_scopes else "fp32"
        batched = [spec.name for spec in graph.inputs if spec.shape[0] == BATCH]
        n = inputs[batched[0]].shape[0] if batched else 1
        compiled, size = self._compiled(name, precision, n)
        feed = {}
        for spec in graph.inputs:
            array = np.ascontiguousarray(inputs[spec.name])
            if spec.name in batched and size > n:
                array = np.concatenate([array, np.repeat(array[-1:], size - n, axis=0)])
            feed[spec.name] = array
        results = compiled.create_infer_request().infer(feed)
        outputs = {}
        for port, value in results.items():
            spec_name = port.get_any_name()
            outputs[spec_name] = value[:n] if size > n else value
        return outputs


class OpenVinoAdapter:
    """The Renderer's model adapter (worker/adapters) whose networks run in OpenVINO on the CPU,
    with the same inputs and outputs as the family's torch adapter; families with export graphs only.

    Precision policy as in torch: fp32, or bf16 for the convolution stacks only (keypoints, flows
    and sampling stay float32). Render workers only: it has no `animate_sessions`, because the live
    engine runs on torch (its graphs take one source, broadcast). `model` stays as loaded: only its
    attributes are read (frame shape, modes), the graphs do the work.
    """

    def __init__(
        self,
        model: nn.Module,
        family: ModelFamily,
        cache_dir: Path,
        on_converted: ConversionCallback | None = None,
    ):
        self.model = model
        self.graphs = OpenVinoGraphs.load(model, family, cache_dir, on_converted)
        self.native_bf16 = cpu_has_bf16(self.graphs.core)
        self._warned_bf16 = False

    def _precision(self, precision: str) -> str:
        """The precision the graphs run in: bf16 only where the CPU has it (OpenVINO would emulate it)."""
        if precision not in OPENVINO_PRECISIONS:
            raise RenderError("the openvino runtime runs fp32 or bf16", "invalid_option")
        if precision == "bf16" and not self.native_bf16:
            if not self._warned_bf16:
                log.warning("this CPU has no native bfloat16: OpenVINO runs bf16 requests in float32")
                self._warned_bf16 = True
            return "fp32"
        return precision

    def keypoints(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """The keypoints graph's outputs under their names, which are the torch detector's keys."""
        outputs = self.graphs.run("keypoints", {"frames": frames.float().numpy()})
        return {name: torch.from_numpy(value.copy()) for name, value in outputs.items()}

    def prepare_source(self, source: torch.Tensor, precision: str, options: AnimationOptions) -> SourceState:
        precision = self._precision(precision)
        source = source.float().contiguous()
        kp_source = self.keypoints(source)
        graphs = self.graphs.graph_set
        outputs = self.graphs.run("source", graphs.source_feed(source, kp_source), precision)
        features = graphs.source_features(outputs, source)
        return SourceState(features, kp_source, precision, options)

    def animate(
        self, state: SourceState, frames: torch.Tensor, kp_driving: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        def run(name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return self.graphs.run(name, inputs, state.precision)

        feed = self.graphs.graph_set.frame_feed(state, kp_driving, frames, run)
        outputs = run("frame", feed)
        return {name: torch.from_numpy(value.copy()) for name, value in outputs.items()}

    def still(self, state: SourceState) -> dict[str, torch.Tensor]:
        """The source's own keypoints in absolute mode, background unmoved: the output with no motion."""
        options = state.options.model_copy(update={"mode": "absolute", "background_motion": False})
        still = replace(state, options=options, kp_initial=state.kp_source)
        return self.animate(still, still.features.image, state.kp_source)
