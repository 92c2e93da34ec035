"""The models a worker serves: every checkpoint in WEIGHTS_DIR, loaded once when the worker starts."""

import logging
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from contract.capabilities import ModelCapabilities
from engine import CheckpointError, load_checkpoint
from engine.animator import Animator
from engine.errors import RenderError
from engine.export import ExportError
from engine.pipeline import VideoPipeline

log = logging.getLogger("worker")


@dataclass
class LoadedModel:
    name: str
    path: Path
    model: nn.Module
    animator: Animator
    pipeline: VideoPipeline

    def describe(self, precision: str | None = None, ms_per_frame: float | None = None) -> ModelCapabilities:
        """What the worker publishes for /models and the API's checks: the family's capabilities and
        how this worker runs the model."""
        return self.animator.capabilities.model_copy(
            update={"runtime": self.animator.runtime, "precision": precision, "ms_per_frame": ms_per_frame}
        )


def describe_choice(animator: Animator) -> str:
    """Why the model runs where it does, with the measured seconds per frame where it was measured."""
    choice = animator.runtime_choice
    timings = ", ".join(
        f"{name} {seconds * 1000:.0f} ms a frame" for name, seconds in choice.seconds_per_frame.items()
    )
    return f"{choice.reason} ({timings})" if timings else choice.reason


def load_models(
    checkpoints: dict[str, Path],
    device: str,
    runtime: str = "torch",
    cache_dir: Path | None = None,
    precision: str = "fp32",
    batch_size: int = 1,
) -> dict[str, LoadedModel]:
    """Load each checkpoint onto `device` for `runtime`; one that fails to load is reported and left out.

    With the openvino runtime a model's first load converts it into `cache_dir` (seconds to a
    minute each); later loads read the converted files. A model whose family has no export graphs
    is reported and left out there too. With auto, each model runs on the runtime measured faster
    for it at `precision` and `batch_size` (once; the choice is cached in `cache_dir`).
    """
    loaded = {}
    for name, path in checkpoints.items():
        try:
            model = load_checkpoint(path, device=device)
            animator = Animator(
                model, device, runtime, cache_dir, name=name, precision=precision, batch_size=batch_size
            )
            animator.check_precision(precision)  # int8 without quantized graphs: left out, saying why
        except (CheckpointError, ExportError, RenderError) as exc:
            log.error("skipping %s: %s", path, exc)
            continue
        loaded[name] = LoadedModel(name, path, animator.model, animator, VideoPipeline(animator))
        log.info(
            "loaded %s model %r from %s (%dx%d, %d keypoints, %s runtime: %s)",
            animator.family.name,
            name,
            path,
            *animator.capabilities.frame_size,
            animator.capabilities.num_kp,
            animator.runtime,
            describe_choice(animator),
        )
    return loaded
