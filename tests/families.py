"""Each registered model family's test fixtures, so the shared checks run on every family alike.

A new family adds a `FamilyCase` here (tests/unit/test_families.py fails until it does): a small
checkpoint with real (or seeded random) weights from ../shared, the published loop its fast path is
compared with, and the option sets that exercise what it offers.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine import load_checkpoint, save_checkpoint
from tests.conftest import FOMM, SHARED, TPSMM, need_shared

LIVEPORTRAIT = SHARED / "liveportrait" / "liveportrait-shared"


def _resaved_at_64(path: Path, folder: Path) -> Path:
    """A published-layout file re-saved in our format with its 64x64 frame size."""
    model = load_checkpoint(need_shared(path))
    model.frame_shape = (64, 64)
    out = folder / path.name
    save_checkpoint(out, model)
    return out


def liveportrait_at_64(folder: Path) -> Path:
    """The shared random-weight LivePortrait folder (published layout) taking 64x64 crops, so it
    renders 128x128: small enough for the unit tier."""
    from engine.families.liveportrait import load_liveportrait, save_liveportrait

    model = load_liveportrait(need_shared(LIVEPORTRAIT))
    model.input_shape = (64, 64)
    save_liveportrait(model, folder / "liveportrait")
    return folder / "liveportrait"


@torch.no_grad()
def fomm_published_loop(model, source: torch.Tensor, driving: torch.Tensor) -> torch.Tensor:
    """The published FOMM demo's way: one frame at a time, the whole generator each time (relative
    motion, scale adapted, relative jacobians)."""
    from engine.families.fomm import normalize_kp

    kp_source = model.kp_detector(source)
    kp_initial = model.kp_detector(driving[:1])
    out = []
    for t in range(driving.shape[0]):
        kp = normalize_kp(kp_source, model.kp_detector(driving[t : t + 1]), kp_initial, True, True, True)
        out.append(model.generator(source, kp_source=kp_source, kp_driving=kp)["prediction"])
    return torch.cat(out)


@torch.no_grad()
def tpsmm_published_loop(model, source: torch.Tensor, driving: torch.Tensor) -> torch.Tensor:
    """The published TPSMM demo's loop, frame by frame, in its relative mode."""
    from engine.families.tpsmm import relative_kp

    kp_source = model.kp_detector(source)
    kp_initial = model.kp_detector(driving[:1])
    out = []
    for t in range(driving.shape[0]):
        kp_driving = model.kp_detector(driving[t : t + 1])
        kp_norm = relative_kp(kp_source=kp_source, kp_driving=kp_driving, kp_driving_initial=kp_initial)
        motion = model.dense_motion_network(source_image=source, kp_driving=kp_norm, kp_source=kp_source)
        out.append(model.inpainting_network(source, motion)["prediction"])
    return torch.cat(out)


@torch.no_grad()
def liveportrait_published_loop(model, source: torch.Tensor, driving: torch.Tensor) -> torch.Tensor:
    """The published LivePortrait animate loop, frame by frame (relative, expression-friendly,
    stitching): kp_info of each frame, its motion from the first frame's, warp and decode."""
    source_info = model.get_kp_info(source)
    f_s, x_s = model.extract_feature_3d(source), model.transform_keypoint(source_info)
    initial = model.get_kp_info(driving[:1])
    out = []
    for t in range(driving.shape[0]):
        x_d = model.transfer_motion(
            source_info, model.get_kp_info(driving[t : t + 1]), driving_initial=initial
        )
        out.append(model.warp_decode(f_s, x_s, x_d)["out"])
    return torch.cat(out)


@dataclass(frozen=True)
class FamilyCase:
    name: str  # the registered family's name
    checkpoint: Callable[[Path], Path]  # writes (or finds) a small model; takes a scratch folder
    published_loop: Callable  # (model, source (1,3,H,W), driving (T,3,H,W)) -> (T,3,H',W'), relative mode
    option_sets: list[dict] = field(default_factory=lambda: [{}])  # motion options its checks cover
    tolerance: float = 1e-4  # fp32 fast path against the published loop
    keypoint_network: str = "kp_detector"  # the network that reads the motion off a frame

    def __str__(self) -> str:
        return self.name


CASES = [
    FamilyCase(
        "fomm",
        lambda folder: _resaved_at_64(FOMM / "fomm-small.pth.tar", folder),
        fomm_published_loop,
        [{"mode": "relative"}, {"mode": "absolute"}],
    ),
    FamilyCase(
        "tpsmm",
        lambda folder: _resaved_at_64(TPSMM / "tpsmm-small.pth.tar", folder),
        tpsmm_published_loop,
        [
            {"mode": "relative"},
            {"mode": "avd"},
            {"mode": "absolute", "background_motion": True},
        ],
    ),
    FamilyCase(
        "liveportrait",
        liveportrait_at_64,
        liveportrait_published_loop,
        [
            {"mode": "relative"},
            {"mode": "absolute", "region": "expression"},
            {"stitching": False, "multiplier": 1.5, "driving_option": "pose-friendly"},
        ],
        keypoint_network="motion_extractor",
    ),
]
