"""Where a model runs: torch on any device (the family's own adapter) or OpenVINO on the CPU (the
family's export graphs, converted once into a cache), or `auto`, the faster of the two for the
model, precision and batch size here (engine/runtimes/auto.py). Every runtime gives the pipeline
the same adapter."""

from collections.abc import Callable
from pathlib import Path

from torch import nn

from contract.capabilities import RUNTIME_CHOICES
from engine.errors import RenderError
from engine.families import family_of
from engine.families.adapter import ModelAdapter
from engine.families.family import ModelFamily
from engine.runtimes.auto import (
    Choice,
    choice_path,
    pick,
    read_choice,
    seconds_per_frame,
    static_choice,
    write_choice,
)


def model_adapter(
    model: nn.Module,
    device: str = "cpu",
    runtime: str = "torch",
    cache_dir: Path | None = None,
    on_converted: Callable[[int, int], None] | None = None,
    precision: str = "fp32",
    batch: int = 1,
) -> tuple[ModelAdapter, Choice]:
    """The adapter that runs `model` on `runtime` and why that runtime; it takes ownership of the
    model. `auto` measures (once, cached in `cache_dir`) at `precision` and `batch`. RenderError
    (invalid_option) for a runtime that cannot run it here."""
    family = family_of(model)
    if runtime not in RUNTIME_CHOICES:
        raise RenderError(
            f"runtime must be one of {', '.join(RUNTIME_CHOICES)}, not {runtime!r}", "invalid_option"
        )
    if runtime == "auto":
        return auto_adapter(model, family, device, cache_dir, on_converted, precision, batch)
    if runtime == "torch":
        return family.adapter(model, device), Choice("torch", {}, "asked for")
    return _openvino(model, family, device, cache_dir, on_converted), Choice("openvino", {}, "asked for")


def _openvino(
    model: nn.Module,
    family: ModelFamily,
    device: str,
    cache_dir: Path | None,
    on_converted: Callable[[int, int], None] | None,
) -> ModelAdapter:
    if device != "cpu":
        raise RenderError("the openvino runtime runs on the CPU only", "invalid_option")
    if cache_dir is None:
        raise RenderError(
            "the openvino runtime needs a cache folder for its converted models", "invalid_option"
        )
    from engine.runtimes.openvino import OpenVinoAdapter

    return OpenVinoAdapter(model, family, cache_dir, on_converted)


def auto_adapter(
    model: nn.Module,
    family: ModelFamily,
    device: str,
    cache_dir: Path | None,
    on_converted: Callable[[int, int], None] | None,
    precision: str,
    batch: int,
) -> tuple[ModelAdapter, Choice]:
    """The faster runtime's adapter: known without measuring (static_choice), read from the cache,
    or measured now: OpenVINO first (it reads the model as loaded), then torch (which prepares it
    in place), a few batches each; the choice is cached with the model."""
    choice = static_choice(family, model, device, precision)
    if choice is not None or cache_dir is None:
        choice = choice or Choice("torch", {}, "no model cache folder to measure OpenVINO in")
        if choice.runtime == "torch":
            return family.adapter(model, device), choice
        return _openvino(model, family, device, cache_dir, on_converted), choice
    path = choice_path(cache_dir, model, family, precision, batch)
    known = read_choice(path)
    if known is not None:
        if known.runtime == "torch":
            return family.adapter(model, device), known
        return _openvino(model, family, device, cache_dir, on_converted), known
    adapters = {"openvino": _openvino(model, family, device, cache_dir, on_converted)}
    adapters["torch"] = family.adapter(model, device)
    timings = {
        name: seconds_per_frame(a, model.frame_shape, precision, batch) for name, a in adapters.items()
    }
    winner = pick(timings)
    choice = Choice(winner, timings, f"measured at batch {batch}, {precision}")
    write_choice(path, choice)
    return adapters[winner], choice
