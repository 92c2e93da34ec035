"""The model families the engine serves, one folder each, registered here by one line each.

The order is the order checkpoints are offered to the families for recognition.
"""

from torch import nn

from engine.checkpoints import Checkpoint
from engine.families.family import ModelFamily
from engine.families.fomm.family import Fomm
from engine.families.liveportrait.family import LivePortrait
from engine.families.tpsmm.family import Tpsmm
from engine.state_dict import CheckpointError

FAMILIES: tuple[ModelFamily, ...] = (
    Tpsmm(),
    Fomm(),
    LivePortrait(),
)


def family_for(checkpoint: Checkpoint) -> ModelFamily:
    """The family whose layout the checkpoint has; CheckpointError when none recognises it."""
    for family in FAMILIES:
        if family.recognises(checkpoint):
            return family
    names = ", ".join(family.name for family in FAMILIES)
    raise CheckpointError(
        f"{checkpoint.path.name} is not laid out as a checkpoint of any family served ({names})"
    )


def family_of(model: nn.Module) -> ModelFamily:
    """The family of a loaded model."""
    for family in FAMILIES:
        if family.name == getattr(model, "family", None):
            return family
    raise ValueError(f"{type(model).__name__} is not a model of a registered family")


__all__ = ["FAMILIES", "ModelFamily", "family_for", "family_of"]
