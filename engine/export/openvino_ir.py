"""Graphs to OpenVINO models, and our precision policy applied to them when they are compiled.

Conversion traces the PyTorch module directly (no ONNX in between) with a dynamic batch; a model is
compiled for one static batch size at a time. Precision is never left to the CPU plugin, which runs
a whole graph in bfloat16 on CPUs with native bf16 unless told otherwise and ignores per-node marks
asking it to keep float32: every graph is compiled with an f32 inference precision, and under
`bf16` the nodes of a graph's `low_precision_scopes` are given bfloat16 types in the graph itself
(as engine/layers/inference.py's LowPrecision does in torch), so keypoints, flows and sampling
stay float32 whatever the CPU.
"""

import warnings
from pathlib import Path

import torch

from engine.export.graphs import BATCH, Graph

OPENVINO_PRECISIONS = ("fp32", "bf16")
# Every graph is compiled with this inference precision: bf16 is in the graph's own types.
INFERENCE_PRECISION_HINT = "f32"
STRUCTURAL = ("Parameter", "Result", "Constant")
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


def _scope_edges(model, scopes: tuple[str, ...]) -> tuple[list, list]:
    """The float32 edges at the border of `scopes`: the input ports of scope nodes fed from outside
    (weights and constants included), and the outputs of scope nodes with their readers outside."""
    inside = {
        node.get_friendly_name()
        for node in model.get_ops()
        if node.get_type_name() not in STRUCTURAL and in_scopes(node.get_friendly_name(), scopes)
    }

    def is_f32(value) -> bool:
        return value.get_element_type().get_type_name() == "f32"

    def outside(port) -> bool:
        return port.get_node().get_friendly_name() not in inside

    entering, leaving = [], []
    for node in (node for node in model.get_ops() if node.get_friendly_name() in inside):
        for port in node.inputs():
            source = port.get_source_output()
            if is_f32(source) and outside(source):
                entering.append(port)
        for output in filter(is_f32, node.outputs()):
            readers = [port for port in output.get_target_inputs() if outside(port)]
            if readers:
                leaving.append((output, readers))
    return entering, leaving


def lower_to_bf16(model, scopes: tuple[str, ...]) -> int:
    """Give the computing nodes of `scopes` bfloat16 types, in place: float32 values entering them
    (weights included) are converted to bf16, values leaving them back to float32. Returns how
    many values are converted in. Nodes outside the scopes keep their float32 types."""
    ov = import_openvino()
    entering, leaving = _scope_edges(model, scopes)
    for port in entering:
        port.replace_source_output(ov.opset13.convert(port.get_source_output(), "bf16").output(0))
    for output, readers in leaving:
        back = ov.opset13.convert(output, "f32").output(0)
        for port in readers:
            port.replace_source_output(back)
    model.validate_nodes_and_infer_types()
    return len(entering)


def compile_graph(core, model, graph: Graph, batch: int, precision: str, cache_dir: Path | None = None):
    """Compile `model` (as converted from `graph`, or its int8 quantization) for a static batch, under
    our precision policy.

    The model is reshaped (and for bf16 lowered) in place, so pass a fresh one.
    """
    if precision not in (*OPENVINO_PRECISIONS, "int8"):
        raise ValueError(f"OpenVINO runs fp32, bf16 or int8, not {precision}")
    model.reshape(
        {spec.name: [batch if dim == BATCH else dim for dim in spec.shape] for spec in graph.inputs}
    )
    if precision == "bf16":
        lower_to_bf16(model, graph.low_precision_scopes)
    config = {
        # int8: a quantized model (engine/export/quantize.py), its int8 nodes int8 in the graph itself
        "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION_HINT,
        "PERFORMANCE_HINT": "LATENCY",
    }
    if cache_dir is not None:
        config["CACHE_DIR"] = str(cache_dir)
    return core.compile_model(model, "CPU", config)


def cpu_has_bf16(core=None) -> bool:
    """Whether this CPU runs bfloat16 natively (AVX-512 BF16 or AMX); otherwise bf16 means f32 here."""
    core = core or import_openvino().Core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
