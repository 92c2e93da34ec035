"""The models a worker serves: every checkpoint in WEIGHTS_DIR, loaded once when the worker starts."""

import logging
from dataclasses import dataclass
from pathlib import Path

from worker.models import AnimationModel, CheckpointError, load_checkpoint
from worker.pipeline import Renderer

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


def load_models(checkpoints: dict[str, Path], device: str) -> dict[str, LoadedModel]:
    """Load each checkpoint onto `device`; one that fails to load is reported and left out."""
    loaded = {}
    for name, path in checkpoints.items():
        try:
            model = load_checkpoint(path, device=device)
        except CheckpointError as exc:
            log.error("skipping %s: %s", path, exc)
            continue
        loaded[name] = LoadedModel(name, path, model, Renderer(model, device))
        log.info(
            "loaded model %r from %s (%dx%d, %d keypoints)", name, path, *model.frame_shape, model.num_kp
        )
    return loaded
