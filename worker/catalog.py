"""The models a worker serves: every checkpoint in WEIGHTS_DIR, loaded once when the worker starts."""

import logging
from dataclasses import dataclass
from pathlib import Path

from worker.export import ExportError
from worker.models import AnimationModel, CheckpointError, TPSMModel, load_checkpoint
from worker.pipeline import Renderer

log = logging.getLogger("worker")


@dataclass
class LoadedModel:
    name: str
    path: Path
    model: AnimationModel | TPSMModel
    renderer: Renderer

    def describe(self) -> dict:
        """What the worker publishes for /models: `family` ("fomm" or "tpsmm"), the motion transfer
        `modes` it can render (the default first) and whether it predicts background motion."""
        return {
            "name": self.name,
            "family": self.model.family,
            "frame_size": list(self.model.frame_shape),
            "num_kp": self.model.num_kp,
            "modes": list(self.model.modes),
            "background_motion": self.model.background_motion,
        }


def load_models(
    checkpoints: dict[str, Path], device: str, runtime: str = "torch", cache_dir: Path | None = None
) -> dict[str, LoadedModel]:
    """Load each checkpoint onto `device` for `runtime`; one that fails to load is reported and left out.

    With the openvino runtime a model's first load converts it into `cache_dir` (seconds to a
    minute each); later loads read the converted files. Both families (FOMM and TPSMM) have export
    graphs; a model of a family without them would be reported and left out too.
    """
    loaded = {}
    for name, path in checkpoints.items():
        try:
            model = load_checkpoint(path, device=device)
            renderer = Renderer(model, device, runtime=runtime, cache_dir=cache_dir)
        except (CheckpointError, ExportError) as exc:
            log.error("skipping %s: %s", path, exc)
            continue
        loaded[name] = LoadedModel(name, path, model, renderer)
        log.info(
            "loaded %s model %r from %s (%dx%d, %d keypoints, %s runtime)",
            model.family,
            name,
            path,
            *model.frame_shape,
            model.num_kp,
            runtime,
        )
    return loaded
