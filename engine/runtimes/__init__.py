"""Where a model runs: torch on any device (the family's own adapter) or OpenVINO on the CPU (the
family's export graphs, converted once into a cache). Both give the pipeline the same adapter."""

from collections.abc import Callable
from pathlib import Path

from torch import nn

from contract.capabilities import RUNTIMES
from engine.errors import RenderError
from engine.families import family_of
from engine.families.adapter import ModelAdapter


def model_adapter(
    model: nn.Module,
    device: str = "cpu",
    runtime: str = "torch",
    cache_dir: Path | None = None,
    on_converted: Callable[[int, int], None] | None = None,
) -> ModelAdapter:
    """The adapter that runs `model` on `runtime`; it takes ownership of the model. RenderError
    (invalid_option) for a runtime that cannot run it here."""
    family = family_of(model)
    if runtime == "torch":
        return family.adapter(model, device)
    if runtime not in RUNTIMES:
        raise RenderError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}", "invalid_option")
    if device != "cpu":
        raise RenderError("the openvino runtime runs on the CPU only", "invalid_option")
    if cache_dir is None:
        raise RenderError(
            "the openvino runtime needs a cache folder for its converted models", "invalid_option"
        )
    from engine.runtimes.openvino import OpenVinoAdapter

    return OpenVinoAdapter(model, family, cache_dir, on_converted)
