"""The animation engine: model families, checkpoint loading, runtimes, the rendering pipeline and
media I/O. It imports no Redis, RQ, FastAPI or service code, so the CLI, the workers, the
benchmarks and the tests all use it the same way.

    from engine import load_checkpoint
    model = load_checkpoint("weights/vox-cpk.pth.tar")  # the family's own model object
"""

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]


def __getattr__(name: str):
    """The names above, imported on first use: importing a light module of the engine (errors,
    media I/O) does not import torch, so the CLI probes its inputs while torch loads."""
    if name == "CheckpointError":
        from engine.state_dict import CheckpointError

        return CheckpointError
    if name in ("load_checkpoint", "save_checkpoint"):
        from engine import checkpoints

        return getattr(checkpoints, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
