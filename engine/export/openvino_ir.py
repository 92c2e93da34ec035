"""Graphs to OpenVINO models, and our precision policy applied to them when they are compiled.

Conversion traces the PyTorch module directly (no ONNX in between) with a dynamic batch; a model is
compiled for one static batch size at a time. Under `bf16`, the CPU plugin lowers every node it may
to bfloat16 unless the node is marked to keep its precision: we mark everything outside a graph's
`low_precision_scopes`, so keypoints, flows and sampling stay float32 as in our torch path.
"""

import warnings
from pathlib import Path

import torch

from engine.export.graphs import BATCH, Graph

# The runtime-info key of OpenVINO's DisableFP16Compression attribute ("<name>_<version>"); the CPU
# plugin keeps nodes that carry it in their original precision under a bf16 or f16 hint too.
KEEP_PRECISION_KEY = "disable_fp16_compression_0"
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
INSTALL_HINT = "pip install 'animate[openvino]'"


class OpenVinoMissing(RuntimeError):
    """OpenVINO is not installed; the message says how to get it."""


def import_openvino():
    """The openvino module, or OpenVinoMissing with the install command."""
    try:
        import openvino
    except ImportError:
        raise OpenVinoMissing(f"OpenVINO is not installed: {INSTALL_HINT}") from None
    return openvino


def runtime_version() -> str:
    return import_openvino().get_version()


def example_inputs(graph: Graph, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Inputs of the right shapes and types for tracing: frames in [0, 1], identity jacobians."""
    generator = torch.Generator().manual_seed(0)
    tensors = []
    for spec in graph.inputs:
        shape = [batch if dim == BATCH else dim for dim in spec.shape]
        if spec.dtype == "bool":
            tensors.append(torch.ones(shape, dtype=torch.bool))
        elif spec.name.endswith("jacobian"):
            tensors.append(torch.eye(2).expand(*shape).clone())
        else:
            tensors.append(torch.rand(shape, generator=generator))
    return tuple(tensors)


def convert(graph: Graph):
    """The graph as an ov.Model with named inputs and outputs and a dynamic batch dimension."""
    ov = import_openvino()
    shapes = [
        (ov.PartialShape([-1 if dim == BATCH else dim for dim in spec.shape]), ov.Type(spec.dtype))
        for spec in graph.inputs
    ]
    with warnings.catch_warnings(), torch.no_grad():
        # Shape checks in the models read as constants while tracing; they are, for one frame size.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # OpenVINO's own use of torch.jit.trace
        model = ov.convert_model(graph.module.eval(), example_input=example_inputs(graph), input=shapes)
    for port, spec in zip(model.inputs, graph.inputs, strict=True):
        port.get_tensor().set_names({spec.name})
    for port, spec in zip(model.outputs, graph.outputs, strict=True):
        port.get_tensor().set_names({spec.name})
    return model


def in_scopes(node_name: str, scopes: tuple[str, ...]) -> bool:
    """Whether a converted node came from one of the modules at `scopes` (dotted paths)."""
    return any(node_name.startswith((f"__module.{scope}/", f"__module.{scope}.")) for scope in scopes)


def keep_float32_outside(model, scopes: tuple[str, ...]) -> int:
    """Mark every computing node outside `scopes` to stay float32 under a bf16 hint; returns how many."""
    marked = 0
    for node in model.get_ops():
        if node.get_type_name() in ("Parameter", "Result", "Constant"):
            continue
        if not in_scopes(node.get_friendly_name(), scopes):
            node.get_rt_info()[KEEP_PRECISION_KEY] = ""
            marked += 1
    return marked


def compile_graph(core, model, graph: Graph, batch: int, precision: str, cache_dir: Path | None = None):
    """Compile `model` (as converted from `graph`, or its int8 quantization) for a static batch, under
    our precision policy.

    The model is reshaped and marked in place, so pass a fresh one (or one compiled the same way).
    """
    if precision not in (*OPENVINO_PRECISIONS, "int8"):
        raise ValueError(f"OpenVINO runs fp32, bf16 or int8, not {precision}")
    model.reshape(
        {spec.name: [batch if dim == BATCH else dim for dim in spec.shape] for spec in graph.inputs}
    )
    if precision == "bf16":
        keep_float32_outside(model, graph.low_precision_scopes)
    config = {
        # int8: a quantized model (engine/export/quantize.py), whose unquantized nodes stay float32
        "INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS.get(precision, "f32"),
        "PERFORMANCE_HINT": "LATENCY",
    }
    if cache_dir is not None:
        config["CACHE_DIR"] = str(cache_dir)
    return core.compile_model(model, "CPU", config)


def cpu_has_bf16(core=None) -> bool:
    """Whether this CPU runs bfloat16 natively (AVX-512 BF16 or AMX); otherwise bf16 means f32 here."""
    core = core or import_openvino().Core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
