"""What every model family tells the engine: how its checkpoints are recognised and loaded, how it
renders (its adapter), how it exports, and what it offers a request.

Each family's folder defines one subclass in its `family.py`; engine/families/__init__.py registers
it. The loader, the runtimes, export, the CLI, the workers and the benchmarks reach a family only
through this interface, found by the checkpoint (`family_for`) or by the model (`family_of`).
"""

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from contract.capabilities import ModelCapabilities
from engine.checkpoints import Checkpoint
from engine.families.adapter import ModelAdapter, Motion
from engine.layers.inference import prepare_for_inference


class ModelFamily(ABC):
    name: ClassVar[str]  # as `model.family`, `animate inspect` and GET /models name it
    title: ClassVar[str]  # the published name

    @abstractmethod
    def recognises(self, checkpoint: Checkpoint) -> bool:
        """Whether the checkpoint is laid out as this family's (a cheap look at its keys or files)."""

    @abstractmethod
    def load(self, checkpoint: Checkpoint, config: dict | str | Path | None) -> nn.Module:
        """The eval-mode model on the CPU, every part checked; CheckpointError saying what is wrong."""

    @abstractmethod
    def adapter(self, model: nn.Module, device: str) -> ModelAdapter:
        """The torch adapter; it takes ownership of the model (folded and fused in place)."""

    def prepare(self, model: nn.Module, device: str) -> nn.Module:
        """The model made ready for inference in place (eval mode, batch norm folded, blocks fused,
        channels-last on `device`), as its adapter and its export graphs run it."""
        return prepare_for_inference(model, device)

    @abstractmethod
    def pose(self, kp: Motion) -> torch.Tensor:
        """(N, D): one vector per frame of a motion dict (from any runtime) whose distances compare
        poses; the best start frame is the driving frame nearest to the source."""

    @abstractmethod
    def modes(self, model: nn.Module) -> tuple[str, ...]:
        """The motion transfer modes the model renders, the default first."""

    @abstractmethod
    def options(self, model: nn.Module) -> tuple[str, ...]:
        """The motion options (contract.options.MOTION_OPTIONS) the model offers besides `mode`."""

    def refusals(self, model: nn.Module) -> dict[str, str]:
        """Why the model does not offer some motion options, by option, where there is more to say
        than that it does not (a file it lacks, say): the refusal's reason."""
        return {}

    def reconstructor(self, model: nn.Module, device: str) -> Callable | None:
        """For `animate eval`: (source (1, 3, H, W), driving (N, 3, H, W)) -> the driving frames
        reconstructed from the source; None where the family has no such protocol here."""
        return None

    def graphs(self, model: nn.Module, source_shapes: list[tuple[int, ...]] | None = None):
        """The model, prepared for inference, as export graphs (engine/export/graphs.GraphSet);
        `source_shapes`, the source graph's output shapes where known, spares running it."""
        from engine.export.graphs import ExportError

        raise ExportError(f"{self.name} models cannot be exported or run on OpenVINO yet")

    def num_keypoints(self, model: nn.Module) -> int:
        return model.num_kp

    def capabilities(self, model: nn.Module, name: str) -> ModelCapabilities:
        options = self.options(model)
        return ModelCapabilities(
            name=name,
            family=self.name,
            title=self.title,
            frame_size=tuple(model.frame_shape),
            num_kp=self.num_keypoints(model),
            modes=list(self.modes(model)),
            options=list(options),
            background_motion="background_motion" in options,
            refusals=self.refusals(model),
        )

    def report(self, model: nn.Module) -> dict:
        """What `animate inspect` prints: the architecture read off the checkpoint and its sizes."""
        return {
            "family": self.name,
            "frame_shape": list(model.frame_shape),
            "num_kp": self.num_keypoints(model),
            "modes": list(self.modes(model)),
            "options": list(self.options(model)),
            "model_params": model.config,
            "parameters": {
                name: sum(p.numel() for p in network.parameters()) for name, network in model.named_children()
            },
        }
