"""`RUNTIME=auto`: the faster runtime for a model, precision and batch size on the machine at hand.

Which runtime wins depends on the CPU (AMX, AVX-512 BF16, AVX2), the family, the precision and
the batch (docs/BENCHMARKS.md has each the other way round somewhere), so it is measured: both
adapters animate a few random frames at the asked batch and precision, the faster is kept (OpenVINO
only by a clear margin, `pick`) and the choice is written in the model cache, keyed by the model
(its checkpoint file's identity, or its content), the precision, the batch, this CPU, the thread
count, the libraries' versions and CHOICE_VERSION. Later processes read the choice and build only
the winner. CPU only: on a GPU the runtime is torch.
"""

import hashlib
import importlib.util
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from contract.options import AnimationOptions
from engine.families.adapter import ModelAdapter, frame_keypoints
from engine.families.family import ModelFamily
from engine.hardware import cpu_flags, cpu_model

log = logging.getLogger("worker")
CHOICES = "runtime-choice"  # the cache's folder of measured choices
TIMED_RUNS = 2  # after one warm-up (which compiles OpenVINO's graphs for the batch)
# Bumped when our own code makes a runtime faster or slower, or the rule that picks changes (2: the
# torch path's packed weights; 3: OPENVINO_MARGIN), so that choices made before an upgrade are
# measured again instead of trusted.
CHOICE_VERSION = 3
# OpenVINO is kept only where it takes at most this fraction of torch's time a frame. Its process
# start costs 1-2 s more (reading and compiling the graphs), and two timed batches cannot resolve a
# few percent: OpenVINO measured 0.3 % and 7.5 % faster lost the whole-process race to torch
# by 17 % and 8 % (docs/BENCHMARKS.md, round 3 on two hosts).
OPENVINO_MARGIN = 0.9


@dataclass
class Choice:
    runtime: str
    seconds_per_frame: dict[str, float]  # by runtime, as measured ({} where nothing had to be measured)
    reason: str


def static_choice(family: ModelFamily, model: nn.Module, device: str, precision: str) -> Choice | None:
    """The runtime when there is nothing to measure: torch off the CPU, for fp16, without the
    openvino extra or for a family without export graphs; OpenVINO for int8."""
    if precision == "int8":
        return Choice("openvino", {}, "int8 runs on OpenVINO only")
    if device != "cpu":
        return Choice("torch", {}, "OpenVINO runs on the CPU only")
    if precision == "fp16":
        return Choice("torch", {}, "OpenVINO runs fp32, bf16 or int8")
    if importlib.util.find_spec("openvino") is None:
        return Choice("torch", {}, "the openvino extra is not installed")
    if type(family).graphs is ModelFamily.graphs:
        return Choice("torch", {}, f"{family.name} models have no export graphs")
    return None


def choice_path(cache_dir: Path, model: nn.Module, family: ModelFamily, precision: str, batch: int) -> Path:
    """Where the measured choice for this model, precision, batch and machine is kept."""
    from engine.export.openvino_ir import runtime_version
    from engine.runtimes.openvino import model_digest

    identity = getattr(model, "checkpoint_identity", None) or model_digest(model)
    key = [
        identity, family.name, model.config, list(model.frame_shape), precision, batch,
        cpu_model(), sorted(cpu_flags()), os.cpu_count(), torch.get_num_threads(),
        torch.__version__, runtime_version(), CHOICE_VERSION,
    ]  # fmt: skip
    name = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return Path(cache_dir) / CHOICES / f"{name}.json"


def read_choice(path: Path) -> Choice | None:
    try:
        record = json.loads(path.read_text())
        choice = Choice(str(record["runtime"]), dict(record["seconds_per_frame"]), str(record["reason"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return choice if choice.runtime in ("torch", "openvino") else None


def write_choice(path: Path, choice: Choice) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(choice.__dict__, indent=2))
    partial.replace(path)


def pick(seconds_per_frame: dict[str, float]) -> str:
    """The runtime to keep from measured seconds a frame: torch unless OpenVINO is clearly faster."""
    if seconds_per_frame["openvino"] <= OPENVINO_MARGIN * seconds_per_frame["torch"]:
        return "openvino"
    return "torch"


@torch.inference_mode()
def seconds_per_frame(
    adapter: ModelAdapter, frame_shape: tuple[int, int], precision: str, batch: int
) -> float:
    """The best of a few timed batches (keypoints and animation) of random frames, per frame."""
    generator = torch.Generator().manual_seed(0)
    h, w = frame_shape
    source = torch.rand(1, 3, h, w, generator=generator).contiguous(memory_format=torch.channels_last)
    frames = torch.rand(batch, 3, h, w, generator=generator).contiguous(memory_format=torch.channels_last)
    state = adapter.prepare_source(source, precision, AnimationOptions())
    state.kp_initial = frame_keypoints(adapter.keypoints(frames), 0)
    best = float("inf")
    for run in range(TIMED_RUNS + 1):
        start = time.perf_counter()
        adapter.animate(state, frames, adapter.keypoints(frames))
        if run:  # the first run warms up
            best = min(best, time.perf_counter() - start)
    return best / batch
