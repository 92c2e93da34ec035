"""What a model family hands to the exporters and to the OpenVINO runtime: its graphs, described.

A family (its export.py) splits its inference into graphs whose inputs and outputs are plain
tensors: the work done once per job and the work done per frame. Exporters and runtimes only
read these descriptions; a family builds its own set (ModelFamily.graphs).
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

BATCH = "batch"  # the name of the batch dimension in shapes; static when an export fixes it


class ExportError(ValueError):
    """The export cannot be made as asked; the message says why."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, its shape (ints, or BATCH), its dtype name, what it is."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str
    doc: str

    def to_dict(self, batch: int | None = None) -> dict:
        shape = [batch if dim == BATCH and batch is not None else dim for dim in self.shape]
        return {"name": self.name, "shape": shape, "dtype": self.dtype, "doc": self.doc}


@dataclass
class Graph:
    """A module whose forward takes `inputs` positionally and returns a tuple in `outputs`' order.

    `low_precision_scopes` are the submodules (dotted paths under `module`) that may run in
    bfloat16 under our precision policy; everything else in the graph stays float32.
    """

    name: str
    module: nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    doc: str
    low_precision_scopes: tuple[str, ...] = ()

    def to_dict(self, batch: int | None = None) -> dict:
        return {
            "doc": self.doc,
            "inputs": [spec.to_dict(batch) for spec in self.inputs],
            "outputs": [spec.to_dict(batch) for spec in self.outputs],
            "low_precision_scopes": list(self.low_precision_scopes),
        }


@dataclass
class GraphSet:
    """A family's graphs and how a caller strings them together (for the manifest)."""

    family: str
    version: int  # of the family's graph code: converted graphs cached under another version are stale
    frame_shape: tuple[int, int]
    graphs: dict[str, Graph]
    once_per_job: list[str] = field(default_factory=list)
    per_frame: list[str] = field(default_factory=list)
    # For the OpenVINO Renderer. source_feed(source, kp_source): the source graph's inputs.
    # source_features(outputs, source): the job's cached features (SourceState.features) from the
    # source graph's outputs. frame_feed(state, kp_driving, frames, run): the frame graph's inputs
    # for a batch, where run(graph, inputs) runs any other per-frame graph of the set.
    frame_feed: Callable | None = None
    source_feed: Callable | None = None
    source_features: Callable | None = None


def source_output_shapes(
    module: nn.Module, inputs: tuple, known: list[tuple[int, ...]] | None = None
) -> list[tuple[int, ...]]:
    """The shapes of a source graph's outputs: `known` (read from a converted copy's manifest, so a
    cache hit runs no model) when given, else by running `module` once on `inputs`."""
    if known is not None:
        return [tuple(shape) for shape in known]
    with torch.no_grad():
        return [tuple(out.shape) for out in module(*inputs)]


GraphRunner = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]  # (graph, inputs) -> outputs


def manifest_source_shapes(manifest: dict) -> list[tuple[int, ...]]:
    """The source graph's output shapes as a manifest (engine/export/files.py) records them."""
    return [tuple(spec["shape"]) for spec in manifest["graphs"]["source"]["outputs"]]


def graph_set(model: nn.Module) -> GraphSet:
    """The graphs of a loaded, inference-prepared model, built by its family (ModelFamily.graphs);
    ExportError for a family without graphs."""
    from engine.families import family_of

    return family_of(model).graphs(model)
