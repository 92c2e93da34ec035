"""int8: post-training quantization of a model's OpenVINO graphs (NNCF), kept only where it pays.

Only the convolution stacks are quantized, with the bf16 policy's scopes (each graph's
`low_precision_scopes`): keypoints, motion transfer, splines, flows, masks and sampling stay float32
(every node outside the scopes is in NNCF's ignored scope, and the graphs compile with a float32
hint). Calibration runs the float32 graphs on real jobs (a clip's first frame as the source, its
other frames as driving frames) and records the inputs the source and frame graphs get. The result
is checked on held-out clips against float32 (PSNR of the frames, the flow's largest move in
pixels) and timed against float32 at the batch size asked; it is written into the model's cache
entry (`int8/`) only when it stays within the bounds and is faster. `animate quantize` runs it.
"""

import contextlib
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from contract.options import AnimationOptions
from engine.errors import RenderError
from engine.export.openvino_ir import import_openvino, in_scopes
from engine.families.adapter import frame_keypoints
from engine.frames import to_tensor
from engine.media.video_io import read_frames

INT8 = "int8"  # the cache entry's folder of quantized graphs
MIN_PSNR = 30.0  # dB against float32, on held-out clips
MAX_FLOW_PIXELS = 0.5  # the flow's largest move from float32, in frame pixels
QUANTIZED_GRAPHS = ("source", "frame")  # the graphs with convolution stacks (low-precision scopes)


class QuantizeError(RuntimeError):
    """Quantization cannot run here (NNCF missing, no frames); the message says why."""


@dataclass
class QuantizeReport:
    psnr_db: float = 0.0
    flow_pixels: float = 0.0
    seconds_per_frame: dict[str, float] = field(default_factory=dict)  # fp32 and int8, batch asked
    calibration_samples: int = 0
    kept: bool = False
    reason: str = ""


def import_nncf():
    try:
        import nncf
    except ImportError:
        raise QuantizeError("int8 quantization needs NNCF: pip install 'animate[int8]'") from None
    nncf.set_log_level(logging.ERROR)  # else it lists every node it leaves out
    return nncf


def clip_jobs(
    clips: list[str], frame_shape: tuple[int, int], frames: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One job per clip: its first frame the source, its next `frames` frames (every 5th) the
    driving frames, at `frame_shape`. RenderError for a clip that cannot be read."""
    jobs = []
    for clip in clips:
        read = []
        for i, frame in enumerate(read_frames(clip, *frame_shape)):
            if i % 5 == 0:
                read.append(frame)
            if len(read) > frames:
                break
        if len(read) < 2:
            raise RenderError(f"{clip}: fewer than two frames to quantize with", "invalid_input")
        tensor = to_tensor(np.stack(read), "cpu")
        jobs.append((tensor[:1].contiguous(), tensor[1:].contiguous()))
    return jobs


def record_feeds(adapter, jobs: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, list[dict]]:
    """The inputs the source and frame graphs get while `adapter` (OpenVINO, fp32) renders each job
    (source (1, 3, H, W), driving (T, 3, H, W)) frame by frame, relative motion."""
    feeds: dict[str, list[dict]] = {name: [] for name in QUANTIZED_GRAPHS}
    graphs = adapter.graphs
    run = graphs.run

    def recording(name: str, inputs: dict, precision: str = "fp32") -> dict:
        if name in feeds:  # what the graph reads of what it is given (a frame feed may carry more)
            names = [spec.name for spec in graphs.graph_set.graphs[name].inputs]
            feeds[name].append({k: np.ascontiguousarray(inputs[k]).copy() for k in names})
        return run(name, inputs, precision)

    graphs.run = recording
    try:
        for source, driving in jobs:
            animate_job(adapter, source, driving, "fp32")
    finally:
        graphs.run = run
    return feeds


@torch.inference_mode()
def animate_job(
    adapter, source: torch.Tensor, driving: torch.Tensor, precision: str
) -> dict[str, torch.Tensor]:
    """Every driving frame animated one at a time, relative motion from the first; outputs joined."""
    state = adapter.prepare_source(source, precision, AnimationOptions())
    kp = adapter.keypoints(driving)
    state.kp_initial = frame_keypoints(kp, 0)
    outputs = [
        adapter.animate(state, driving[t : t + 1], frame_keypoints(kp, t)) for t in range(len(driving))
    ]
    return {name: torch.cat([out[name] for out in outputs]) for name in outputs[0]}


def quantize_graph(model, scopes: tuple[str, ...], feeds: list[dict]):
    """The ov.Model with every convolution inside `scopes` quantized to int8 (NNCF, calibrated on
    `feeds`); everything outside stays float."""
    nncf = import_nncf()
    outside = [
        node.get_friendly_name()
        for node in model.get_ops()
        if node.get_type_name() not in ("Parameter", "Result", "Constant")
        and not in_scopes(node.get_friendly_name(), scopes)
    ]
    with contextlib.redirect_stdout(sys.stderr):  # its progress bars: stdout is the caller's
        return nncf.quantize(
            model,
            nncf.Dataset(feeds),
            subset_size=len(feeds),
            ignored_scope=nncf.IgnoredScope(names=outside, validate=False),
        )


def write_int8(graphs, feeds: dict[str, list[dict]]) -> Path:
    """Quantize the graphs with convolution stacks into `<entry>/int8` (atomically); returns it."""
    ov = import_openvino()
    folder = graphs.folder / INT8
    partial = graphs.folder / f".{INT8}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        for name in QUANTIZED_GRAPHS:
            model = graphs.core.read_model(str(graphs.folder / f"{name}.xml"))
            scopes = graphs.graph_set.graphs[name].low_precision_scopes
            ov.save_model(quantize_graph(model, scopes, feeds[name]), str(partial / f"{name}.xml"))
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return folder


def compare(adapter, jobs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """PSNR (dB) of int8 frames against fp32 over all held-out jobs, and the flow's largest move
    from fp32 in frame pixels."""
    squared, count, flow = 0.0, 0, 0.0
    for source, driving in jobs:
        fp32 = animate_job(adapter, source, driving, "fp32")
        int8 = animate_job(adapter, source, driving, INT8)
        squared += float(((int8["prediction"] - fp32["prediction"]) ** 2).sum())
        count += fp32["prediction"].numel()
        width = source.shape[-1]
        flow = max(flow, float((int8["deformation"] - fp32["deformation"]).abs().max()) * (width - 1) / 2)
    return 10 * np.log10(count / max(squared, 1e-20)), flow


def time_precisions(adapter, source: torch.Tensor, frames: torch.Tensor) -> dict[str, float]:
    """Seconds per frame of fp32 and int8 at the batch of `frames`: the best of three after a warm-up."""
    timings = {}
    for precision in ("fp32", INT8):
        state = adapter.prepare_source(source, precision, AnimationOptions())
        kp = adapter.keypoints(frames)
        state.kp_initial = frame_keypoints(kp, 0)
        runs = []
        for _ in range(4):
            start = time.perf_counter()
            adapter.animate(state, frames, kp)
            runs.append(time.perf_counter() - start)
        timings[precision] = min(runs[1:]) / len(frames)
    return timings


def quantize(
    adapter,
    calibration: list[tuple[torch.Tensor, torch.Tensor]],
    held_out: list[tuple[torch.Tensor, torch.Tensor]],
    timing_frames: torch.Tensor,
) -> QuantizeReport:
    """Quantize the OpenVINO adapter's model, check it on `held_out` and time it on `timing_frames`
    (the batch to pay at); the int8 graphs stay in the cache only when they pass and pay."""
    report = QuantizeReport()
    feeds = record_feeds(adapter, calibration)
    report.calibration_samples = len(feeds["frame"])
    if not report.calibration_samples:
        raise QuantizeError("no calibration frames")
    folder = write_int8(adapter.graphs, feeds)
    adapter.graphs.forget(INT8)
    report.psnr_db, report.flow_pixels = compare(adapter, held_out)
    report.seconds_per_frame = time_precisions(adapter, held_out[0][0], timing_frames)
    speedup = report.seconds_per_frame["fp32"] / report.seconds_per_frame[INT8]
    if report.psnr_db < MIN_PSNR:
        report.reason = f"PSNR {report.psnr_db:.1f} dB against fp32 is below {MIN_PSNR:g} dB"
    elif report.flow_pixels > MAX_FLOW_PIXELS:
        report.reason = f"the flow moves {report.flow_pixels:.2f} px from fp32, more than {MAX_FLOW_PIXELS}"
    elif speedup <= 1.0:
        report.reason = f"int8 is not faster than fp32 here ({speedup:.2f}x)"
    else:
        report.kept, report.reason = True, f"{speedup:.2f}x fp32, within the bounds"
    if not report.kept:
        shutil.rmtree(folder, ignore_errors=True)
        adapter.graphs.forget(INT8)
    return report
