"""The animation engine: model families, checkpoint loading, runtimes, the rendering pipeline and
media I/O. It imports no Redis, RQ, FastAPI or service code, so the CLI, the workers, the
benchmarks and the tests all use it the same way.

    from engine import load_checkpoint
    model = load_checkpoint("weights/vox-cpk.pth.tar")  # the family's own model object
"""

from engine.checkpoints import load_checkpoint, save_checkpoint
from engine.state_dict import CheckpointError

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]
