"""Self-contained checks of the networks and the loader; nothing from outside is needed."""

import json
from pathlib import Path

import pytest
import torch

from engine import CheckpointError, load_checkpoint
from engine.families.fomm import build_model, normalize_kp
from engine.families.fomm.keypoint_detector import expected_coordinates
from engine.layers.blocks import AntiAliasDownsample, coordinate_grid, inverse_2x2, warp
from engine.layers.geometry import convex_hull_area, normalized_arrangement
from engine.layers.inference import fold_batch_norm
from engine.pipeline import best_start_frame
from tests.conftest import FOMM, need_shared

MANIFESTS = FOMM / "official-manifests.json"

TINY = {
    "common_params": {"num_kp": 5, "num_channels": 3, "estimate_jacobian": True},
    "kp_detector_params": {
        "temperature": 0.1,
        "block_expansion": 8,
        "max_features": 32,
        "num_blocks": 3,
        "scale_factor": 0.5,
    },
    "generator_params": {
        "block_expansion": 8,
        "max_features": 32,
        "num_down_blocks": 2,
        "num_bottleneck_blocks": 1,
        "estimate_occlusion_map": True,
        "dense_motion_params": {
            "block_expansion": 8,
            "max_features": 32,
            "num_blocks": 3,
            "scale_factor": 0.5,
        },
    },
}


def test_warping_by_the_identity_grid_returns_the_input():
    image = torch.rand(2, 3, 17, 23)
    grid = coordinate_grid(17, 23, image).expand(2, 17, 23, 2)
    assert torch.allclose(warp(image, grid), image, atol=1e-6)


@pytest.mark.parametrize("row, col", [(0, 0), (5, 9), (12, 3), (12, 15)])
def test_keypoint_of_a_delta_heatmap_lands_on_its_pixel(row, col):
    heatmap = torch.zeros(1, 1, 13, 16)
    heatmap[0, 0, row, col] = 1
    x, y = expected_coordinates(heatmap)[0, 0].tolist()
    assert x == pytest.approx(2 * col / 15 - 1, abs=1e-6)
    assert y == pytest.approx(2 * row / 12 - 1, abs=1e-6)


def test_closed_form_2x2_inverse_equals_torch_inverse():
    matrices = torch.randn(500, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    matrices = matrices[torch.linalg.det(matrices).abs() > 0.1]  # conditioned like learned jacobians
    ours = inverse_2x2(matrices)
    assert torch.allclose(ours, torch.inverse(matrices), rtol=1e-12, atol=1e-12)
    assert torch.allclose(matrices @ ours, torch.eye(2, dtype=torch.float64).expand_as(ours), atol=1e-12)
    jacobians = matrices[:40].float().view(4, 10, 2, 2)  # (N, K, 2, 2) in float32, as the models use
    assert (inverse_2x2(jacobians) - torch.inverse(jacobians)).abs().max() < 1e-4


def test_convex_hull_area_of_a_square_with_inner_points():
    points = torch.tensor([[0, 0], [2, 0], [2, 2], [0, 2], [1, 1], [0.5, 1.5]]).numpy()
    assert convex_hull_area(points) == pytest.approx(4.0)


def test_relative_mode_with_the_source_as_driving_reproduces_the_source_keypoints():
    model = build_model(TINY, (64, 64)).eval()
    source = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        kp_source = model.kp_detector(source)
        kp_driving = model.kp_detector(source.expand(4, -1, -1, -1))
    kp_norm = normalize_kp(
        kp_source,
        kp_driving,
        {k: v[:1] for k, v in kp_driving.items()},
        adapt_movement_scale=True,
        use_relative_movement=True,
        use_relative_jacobian=True,
    )
    assert torch.allclose(kp_norm["value"], kp_source["value"].expand(4, -1, -1), atol=1e-6)
    assert torch.allclose(kp_norm["jacobian"], kp_source["jacobian"].expand(4, -1, -1, -1), atol=1e-5)


def test_best_start_frame_finds_the_frame_arranged_like_the_source():
    torch.manual_seed(0)
    source = torch.rand(10, 2) * 1.6 - 0.8
    frames = torch.rand(6, 10, 2) * 1.6 - 0.8
    angle = torch.tensor(0.3)
    rotation = torch.tensor([[angle.cos(), -angle.sin()], [angle.sin(), angle.cos()]])
    frames[4] = 0.5 * source @ rotation.T + 0.1  # same arrangement, moved, scaled and turned
    assert best_start_frame(normalized_arrangement(source[None]), normalized_arrangement(frames)) == 4


def _gaussian_buffer(state: dict, key: str, scale: float) -> None:
    state[key] = AntiAliasDownsample(state[key].shape[0], scale).weight


def _random_published_checkpoint(path: Path, manifest: dict) -> None:
    """Random tensors with the manifest's keys and shapes, saved in the published file layout."""
    generator = torch.Generator().manual_seed(0)
    params = manifest["model_params"]
    parts = {}
    for part in ("kp_detector", "generator"):
        state = {}
        for key, shape in manifest[part].items():
            if key.endswith("num_batches_tracked"):
                state[key] = torch.tensor(100)
            elif key.endswith("running_var"):
                state[key] = torch.rand(shape, generator=generator) + 0.5
            else:
                state[key] = torch.randn(shape, generator=generator) * 0.02
        parts[part] = state
    _gaussian_buffer(parts["kp_detector"], "down.weight", params["kp_detector_params"]["scale_factor"])
    dense_scale = params["generator_params"]["dense_motion_params"]["scale_factor"]
    _gaussian_buffer(parts["generator"], "dense_motion_network.down.weight", dense_scale)
    torch.save({**parts, "discriminator": {}, "optimizer_generator": {}, "epoch": 99}, path)


def _manifests() -> dict:
    if not MANIFESTS.exists():
        pytest.skip(f"{MANIFESTS} is absent: it lists the published checkpoints' keys and shapes")
    return json.loads(MANIFESTS.read_text())


@pytest.mark.parametrize(
    "name",
    [
        "vox-256",
        "vox-adv-256",
        "taichi-256",
        "taichi-adv-256",
        "fashion-256",
        "mgif-256",
        "bair-256",
        "nemo-256",
    ],
)
def test_every_published_configuration_loads_and_renders_a_frame(name, tmp_path):
    manifest = _manifests()[name]
    path = tmp_path / f"{name}.pth.tar"
    _random_published_checkpoint(path, manifest)
    model = load_checkpoint(path)
    expected = manifest["model_params"]
    assert model.frame_shape == (256, 256)
    assert model.config["common_params"] == expected["common_params"]
    kp = model.config["kp_detector_params"]
    assert kp["scale_factor"] == expected["kp_detector_params"]["scale_factor"]
    assert kp.get("single_jacobian_map", False) == expected["kp_detector_params"].get(
        "single_jacobian_map", False
    )
    dense = model.config["generator_params"]["dense_motion_params"]
    for key in ("block_expansion", "num_blocks", "scale_factor"):
        assert dense[key] == expected["generator_params"]["dense_motion_params"][key]
    counts = manifest["params"]
    assert sum(p.numel() for p in model.kp_detector.parameters()) == counts["kp_detector"]
    assert sum(p.numel() for p in model.generator.parameters()) == counts["generator"]
    with torch.no_grad():
        frame = torch.rand(1, 3, 256, 256)
        kp = model.kp_detector(frame)
        out = model.generator(frame, kp_source=kp, kp_driving=kp)
    assert out["prediction"].shape == (1, 3, 256, 256)
    assert torch.isfinite(out["prediction"]).all()


def _tiny_checkpoint(path: Path, **overrides) -> dict:
    model = build_model(TINY, (64, 64))
    data = {"kp_detector": model.kp_detector.state_dict(), "generator": model.generator.state_dict()}
    data.update(overrides)
    torch.save(data, path)
    return data


def test_a_yaml_config_overrides_what_the_tensors_cannot_tell(tmp_path):
    _tiny_checkpoint(tmp_path / "m.pth.tar")
    (tmp_path / "c.yaml").write_text("model_params:\n  kp_detector_params:\n    temperature: 0.5\n")
    model = load_checkpoint(tmp_path / "m.pth.tar", config=tmp_path / "c.yaml")
    assert model.kp_detector.temperature == 0.5
    assert not model.kp_detector.training and not model.generator.training


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: p.write_bytes(b"definitely not a checkpoint"), "not a readable torch checkpoint"),
        (lambda p: p.write_bytes(b""), "not a readable torch checkpoint"),
        (lambda p: torch.save([1, 2, 3], p), "holds a list"),
        (lambda p: torch.save({"generator": {}}, p), "no 'kp_detector'"),
    ],
)
def test_files_that_are_not_checkpoints_are_refused_with_a_reason(tmp_path, write, message):
    path = tmp_path / "bad.pth.tar"
    write(path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_a_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "m.pth.tar"
    _tiny_checkpoint(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint(path)


def test_wrong_keys_and_shapes_are_named(tmp_path):
    path = tmp_path / "m.pth.tar"
    data = _tiny_checkpoint(path)
    data["generator"]["final.weight"] = torch.zeros(3, 8, 5, 5)
    data["generator"]["extra.weight"] = torch.zeros(1)
    torch.save(data, path)
    with pytest.raises(CheckpointError, match=r"unexpected extra\.weight.*wrong shape final\.weight"):
        load_checkpoint(path)


def test_code_in_a_pickle_is_never_run(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    import pickle

    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        pickle.dump({"kp_detector": Exploit(), "generator": {}}, f)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_a_missing_checkpoint_is_reported(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pth.tar")


def test_folding_batch_norm_keeps_the_function():
    model = load_checkpoint(need_shared(FOMM / "fomm-small.pth.tar"))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before = model.kp_detector(x)["value"]
        assert fold_batch_norm(model) > 10
        after = model.kp_detector(x)["value"]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.kp_detector.modules())
    assert torch.allclose(before, after, atol=1e-5)
