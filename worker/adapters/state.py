"""The per-job state every model adapter keeps."""

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class SourceState:
    """What a job computes once from its source image, then reuses for every driving frame."""

    features: Any  # the family's cache of what depends on the source alone
    kp_source: dict[str, torch.Tensor]
    precision: str = "fp32"
    mode: str = "relative"  # "relative", "absolute" or (TPSMM) "avd"
    adapt_scale: bool = True
    background_motion: bool = False
    kp_initial: dict[str, torch.Tensor] | None = None  # taken from the first frame when None
