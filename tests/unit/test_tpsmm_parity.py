"""Our TPSMM networks compute the published function: every golden output of the original
implementation matches, float64 to 1e-9 (an exact re-implementation) and float32 to 1e-4."""

import json

import numpy as np
import pytest
import torch

from engine import load_checkpoint
from engine.families.tpsmm import relative_kp
from tests.conftest import TPSMM, need_shared

FIXTURES = ["tpsmm-small", "tpsmm-small-nobg"]
PRECISIONS = {"float64": ("-f64", torch.float64, 1e-9), "float32": ("", torch.float32, 1e-4)}


def _close(name: str, ours: torch.Tensor, golden: np.ndarray, tolerance: float) -> None:
    assert tuple(ours.shape) == golden.shape, name
    error = float(np.abs(ours.double().numpy() - golden).max())
    assert error < tolerance, f"{name}: max abs error {error:.2e}"


def _inputs(name: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    frames = np.load(need_shared(TPSMM / f"{name}.npz"))
    source = torch.from_numpy(frames["source"]).permute(2, 0, 1)[None].to(dtype)
    driving = torch.from_numpy(frames["driving"]).permute(0, 3, 1, 2).to(dtype)
    return source, driving


@torch.no_grad()
def published_loop(model, source: torch.Tensor, driving: torch.Tensor, mode: str) -> dict:
    """The published demo's loop, frame by frame, with the published modes (and its reconstruction
    protocol's background motion for "standard_bg"); every intermediate output, frames concatenated."""
    kp_source = model.kp_detector(source)
    kp_initial = model.kp_detector(driving[:1])
    frames: dict[str, list] = {}
    for t in range(driving.shape[0]):
        kp_driving = model.kp_detector(driving[t : t + 1])
        if mode == "relative":
            kp_norm = relative_kp(kp_source=kp_source, kp_driving=kp_driving, kp_driving_initial=kp_initial)
        elif mode == "avd":
            kp_norm = model.avd_network(kp_source, kp_driving)
        else:
            kp_norm = kp_driving
        bg_param = model.bg_predictor(source, driving[t : t + 1]) if mode == "standard_bg" else None
        dense_motion = model.dense_motion_network(
            source_image=source, kp_driving=kp_norm, kp_source=kp_source, bg_param=bg_param
        )
        out = model.inpainting_network(source, dense_motion)
        step = {
            "kp_driving": kp_driving["fg_kp"],
            "kp_norm": kp_norm["fg_kp"],
            "deformation": dense_motion["deformation"],
            "contribution_maps": out["contribution_maps"],
            "deformed": out["deformed"],
            "prediction": out["prediction"],
            **{f"occlusion_map_{i}": mask for i, mask in enumerate(out["occlusion_map"])},
        }
        if bg_param is not None:
            step["bg_param"] = bg_param
        for key, value in step.items():
            frames.setdefault(key, []).append(value)
    return {"kp_source": kp_source["fg_kp"], **{k: torch.cat(v) for k, v in frames.items()}}


@pytest.mark.parametrize("name", FIXTURES)
def test_inferred_architecture_and_modes_match_the_published_config(name):
    model = load_checkpoint(need_shared(TPSMM / f"{name}.pth.tar"))
    meta = json.loads((TPSMM / f"{name}.json").read_text())
    assert model.family == "tpsmm"
    assert model.config == meta["model_params"]
    published = {"standard": "absolute", "relative": "relative", "avd": "avd"}
    assert set(model.modes) == {published[m] for m in meta["modes"] if m in published}
    assert model.background_motion == ("standard_bg" in meta["modes"])
    assert model.num_kp == 5 * meta["model_params"]["common_params"]["num_tps"]


@pytest.mark.parametrize("solve", ["linalg", "gauss_jordan"])
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", FIXTURES)
def test_every_golden_output_matches(name, precision, solve, monkeypatch):
    """With the splines fitted by torch.linalg.solve (eager) and by the Gauss-Jordan solve the
    exporters trace (engine/families/tpsmm/tps.py), which must be as exact."""
    if solve == "gauss_jordan":
        monkeypatch.setattr("engine.families.tpsmm.tps.exporting", lambda: True)
    suffix, dtype, tolerance = PRECISIONS[precision]
    golden = np.load(need_shared(TPSMM / f"{name}{suffix}.npz"))
    model = load_checkpoint(TPSMM / f"{name}.pth.tar").to(dtype)
    source, driving = _inputs(name, dtype)
    modes = sorted({key.split("/")[0] for key in golden.files if "/" in key})
    assert {"standard", "relative", "avd"} <= set(modes)
    checked = set()
    for mode in modes:
        ours = published_loop(model, source, driving, mode)
        for key, value in ours.items():
            golden_key = key if key.startswith("kp_") and key != "kp_norm" else f"{mode}/{key}"
            _close(golden_key, value, golden[golden_key], tolerance)
            checked.add(golden_key)
    assert checked == set(golden.files) - {"source", "driving"}, "every golden output is compared"


FAST_PATH_MODES = {  # published mode -> our mode and background motion
    "relative": ("relative", False),
    "standard": ("absolute", False),
    "avd": ("avd", False),
    "standard_bg": ("absolute", True),
}


@pytest.mark.parametrize("shape", [(64, 64), (64, 96)])
@pytest.mark.parametrize("name", FIXTURES)
def test_the_renderer_fast_path_equals_the_published_loop(name, shape):
    """Source keypoints, encoder features and the rest that depends on the source computed once,
    batch norm folded, channels-last, frames in batches of 3 and 2: the published loop's frames to
    1e-4 in float32, on the fixture's square frames and on non-square ones."""
    from engine.animator import Animator

    source, driving = _inputs(name, torch.float32)
    source = torch.nn.functional.interpolate(source, size=shape, mode="bilinear", align_corners=True)
    driving = torch.nn.functional.interpolate(driving, size=shape, mode="bilinear", align_corners=True)
    reference = load_checkpoint(TPSMM / f"{name}.pth.tar")
    renderer = Animator(load_checkpoint(TPSMM / f"{name}.pth.tar"))
    encoded = []
    renderer.model.inpainting_network.first.register_forward_hook(lambda *_: encoded.append(1))
    golden = np.load(TPSMM / f"{name}.npz")
    prepared = 0
    for published, (mode, background_motion) in FAST_PATH_MODES.items():
        if background_motion and not renderer.model.background_motion:
            continue
        prepared += 1
        expected = published_loop(reference, source, driving, published)["prediction"]
        state = renderer.prepare_source(source, mode=mode, background_motion=background_motion)
        fast = torch.cat(
            [renderer.animate_batch(state, driving[:3]), renderer.animate_batch(state, driving[3:])]
        )
        _close(f"{published} fast path {shape}", fast, expected.numpy(), 1e-4)
        if shape == (64, 64):
            _close(f"{published} fast path", fast, golden[f"{published}/prediction"], 1e-4)
    assert len(encoded) == prepared  # the source is encoded once per job, never per frame
