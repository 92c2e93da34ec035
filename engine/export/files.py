"""Writing a model's graphs to a folder: ONNX or OpenVINO IR files and a manifest.json that says
what each file computes, what a caller runs once per job and what per frame.

The folder appears complete or not at all: files are written into a sibling and renamed.
"""

import hashlib
import inspect
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from engine.export.graphs import BATCH, ExportError, Graph, GraphSet
from engine.export.openvino_ir import (
    INFERENCE_PRECISION_HINT,
    OPENVINO_PRECISIONS,
    convert,
    example_inputs,
    import_openvino,
    lower_to_bf16,
)

FORMATS = ("onnx", "openvino")
MANIFEST = "manifest.json"
ONNX_OPSET = 18
ONNX_INSTALL_HINT = "pip install 'animate[onnx]'"
PRECISION_POLICY = (
    "bf16: each graph's low_precision_scopes (convolution stacks) may run in bfloat16, everything "
    "else (keypoints, motion transfer, flows, sampling) stays float32. With OpenVINO the bf16 nodes "
    "have bfloat16 types in the IR itself: compile every graph with INFERENCE_PRECISION_HINT=f32, "
    "since the CPU plugin otherwise runs whole graphs in bf16 on CPUs that have it."
)

# (graphs done, graphs in all, stage)
ConversionCallback = Callable[[int, int], None]  # (graphs converted, graphs)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _dynamic_shapes(graph: Graph, batch: int | None):
    """torch.export's dynamic_shapes for `graph`: the batch dimension dynamic unless fixed."""
    dims = tuple(
        {0: torch.export.Dim.DYNAMIC} if batch is None and spec.shape[0] == BATCH else None
        for spec in graph.inputs
    )
    parameters = inspect.signature(graph.module.forward).parameters.values()
    varargs = any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in parameters)
    return (dims,) if varargs else dims


def require_packages(fmt: str) -> None:
    """Fail early, saying what to install, when the format's packages are missing."""
    if fmt == "openvino":
        import_openvino()
        return
    try:
        import onnx  # noqa: F401  (torch's exporter needs it and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError:
        raise ExportError(
            f"ONNX export needs the onnx and onnxscript packages: {ONNX_INSTALL_HINT}"
        ) from None


def write_onnx(graph: Graph, path: Path, batch: int | None) -> None:
    """One graph as a self-contained .onnx file (weights inside), batch dynamic or fixed."""
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # its notes about optional packages (torchvision ops)
    try:
        _onnx_export(graph, path, batch)
    finally:
        exporter_log.setLevel(level)


def _onnx_export(graph: Graph, path: Path, batch: int | None) -> None:
    """Unoptimised (`optimize=False`): onnxscript's optimizer (0.7) rewrites `x + c` to `x` for any
    scalar |c| < 1e-8, which drops the 1e-9 in the thin-plate splines' r^2 log(r^2 + 1e-9) and makes
    them NaN. ONNX Runtime folds and fuses the graph when it loads it, so nothing runs slower."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph.module.eval(),
            example_inputs(graph, batch or 2),
            str(path),
            input_names=[spec.name for spec in graph.inputs],
            output_names=[spec.name for spec in graph.outputs],
            dynamic_shapes=_dynamic_shapes(graph, batch),
            opset_version=ONNX_OPSET,
            optimize=False,
            external_data=False,
            verbose=False,
        )


def write_openvino(graph: Graph, path: Path, batch: int | None, precision: str = "fp32") -> None:
    """One graph as OpenVINO IR (path.xml + path.bin), batch dynamic or fixed; float32 weights, but
    for bf16 those of the low-precision scopes, which run in bfloat16 (lower_to_bf16)."""
    ov = import_openvino()
    model = convert(graph)
    if precision == "bf16":
        lower_to_bf16(model, graph.low_precision_scopes)
    if batch is not None:
        model.reshape({spec.name: [batch if d == BATCH else d for d in spec.shape] for spec in graph.inputs})
    ov.save_model(model, str(path), compress_to_fp16=False)


def manifest(
    graphs: GraphSet,
    fmt: str,
    files: dict[str, str],
    batch: int | None,
    precision: str,
    checkpoint: dict,
) -> dict:
    """What the folder holds and how to run it; see docs/EXPORT.md."""
    entries = {}
    for name, graph in graphs.graphs.items():
        entry = {"file": files[name], **graph.to_dict(batch)}
        if fmt == "openvino":
            entry["compile"] = {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISION_HINT}
        entries[name] = entry
    runtime = {"openvino": import_openvino().get_version()} if fmt == "openvino" else {"opset": ONNX_OPSET}
    return {
        "family": graphs.family,
        "format": fmt,
        "precision": precision,
        "precision_policy": PRECISION_POLICY,
        "batch": batch if batch is not None else "dynamic",
        "frame_shape": list(graphs.frame_shape),
        "checkpoint": checkpoint,
        "runtime": runtime,
        "exported_with": {"torch": torch.__version__.split("+")[0]},
        "once_per_job": graphs.once_per_job,
        "per_frame": graphs.per_frame,
        "graphs": entries,
    }


def check_request(fmt: str, batch: int | None, precision: str, out: Path) -> None:
    """Refuse what cannot be exported before any work is done."""
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if batch is not None and not 1 <= batch <= 256:
        raise ExportError("batch must be from 1 to 256")
    if precision not in OPENVINO_PRECISIONS:
        raise ExportError(f"precision must be fp32 or bf16, not {precision!r}")
    if fmt == "onnx" and precision != "fp32":
        raise ExportError("ONNX exports are fp32: ONNX Runtime's CPU kernels have no bfloat16 convolution")
    require_packages(fmt)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty folder")
    if not out.parent.is_dir():
        raise ExportError(f"output folder's parent does not exist: {out.parent}")


def export_graphs(
    graphs: GraphSet,
    out: Path,
    fmt: str,
    batch: int | None = None,
    precision: str = "fp32",
    checkpoint: dict | None = None,
    on_converted: ConversionCallback | None = None,
) -> dict:
    """Write every graph of `graphs` and the manifest into the folder `out`; returns the manifest."""
    check_request(fmt, batch, precision, out)
    suffix = ".onnx" if fmt == "onnx" else ".xml"
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        files = {}
        total = len(graphs.graphs)
        for done, (name, graph) in enumerate(graphs.graphs.items()):
            if on_converted is not None:
                on_converted(done, total)
            files[name] = name + suffix
            if fmt == "onnx":
                write_onnx(graph, partial / files[name], batch)
            else:
                write_openvino(graph, partial / files[name], batch, precision)
        if on_converted is not None:
            on_converted(total, total)
        info = manifest(graphs, fmt, files, batch, precision, checkpoint or {})
        (partial / MANIFEST).write_text(json.dumps(info, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return info
