"""The models a worker serves: every checkpoint in WEIGHTS_DIR, loaded once when the worker starts."""

import logging
from dataclasses import dataclass
from pathlib import Path

from worker.models import AnimationModel, CheckpointError, load_checkpoint
from worker.pipeline import Renderer, make_renderer

log = logging.getLogger("worker")


@dataclass
class LoadedModel:
    name: str
    path: Path
    model: AnimationModel
    renderer: Renderer

    def describe(self) -> dict:
        """What the worker publishes for /models."""
        return {"name": self.name, "frame_size": list(self.model.frame_shape), "num_kp": self.model.num_kp}


def load_models(
    checkpoints: dict[str, Path], device: str, runtime: str = "torch", cache_dir: Path | None = None
) -> dict[str, LoadedModel]:
    """Load each checkpoint onto `device` for `runtime`; one that fails to load is reported and left out.

    With the openvino runtime a model's first load converts it into `cache_dir` (seconds to a
    minute each); later loads read the converted files.
    """
    loaded = {}
    for name, path in checkpoints.items():
        try:
            model = load_checkpoint(path, device=device)
        except CheckpointError as exc:
            log.error("skipping %s: %s", path, exc)
            continue
        loaded[name] = LoadedModel(name, path, model, make_renderer(model, device, runtime, cache_dir))
        log.info(
            "loaded model %r from %s (%dx%d, %d keypoints, %s runtime)",
            name,
            path,
            *model.frame_shape,
            model.num_kp,
            runtime,
        )
    return loaded
