"""TPSMM checkpoints: every published layout loads and renders, bad files are refused with a reason,
and loading does not read what inference does not use."""

import json
import math

import pytest
import torch

from engine import CheckpointError, load_checkpoint, save_checkpoint
from engine.families.tpsmm import relative_kp
from engine.layers.blocks import AntiAliasDownsample
from tests.conftest import TPSMM, need_shared

MANIFESTS = TPSMM / "tpsmm-official-manifests.json"
PUBLISHED = ["vox-256", "taichi-256", "ted-384", "mgif-256"]
OPTIMIZERS = {"optimizer": {}, "optimizer_bg_predictor": {}, "optimizer_avd": {}, "epoch": 99}


def _manifest(name: str) -> dict:
    return json.loads(need_shared(MANIFESTS).read_text())[name]


def _random_parts(manifest: dict, batches_seen: int = 1000) -> dict[str, dict]:
    """Random tensors of the manifest's keys and shapes, as views into one random pool (so the file
    stays small), with the anti-aliasing kernel of the manifest's scale."""
    generator = torch.Generator().manual_seed(0)
    shapes = [shape for part in manifest["params"] for shape in manifest[part].values()]
    pool = torch.randn(max(math.prod(shape) for shape in shapes), generator=generator) * 0.05
    parts = {}
    for part in manifest["params"]:
        state = {}
        for key, shape in manifest[part].items():
            values = pool[: math.prod(shape)].view(shape)
            if key.endswith("num_batches_tracked"):
                state[key] = torch.tensor(batches_seen)
            elif key.endswith("running_var"):
                state[key] = values.abs() + 0.5
            else:
                state[key] = values
        parts[part] = state
    scale = manifest["model_params"]["dense_motion_params"]["scale_factor"]
    parts["dense_motion_network"]["down.weight"] = AntiAliasDownsample(3, scale).weight
    return parts


@torch.no_grad()
def _render_one_frame(model, size: int) -> torch.Tensor:
    """One frame the published demo's way (relative mode), at `size` x `size`."""
    source, driving = torch.rand(1, 3, size, size), torch.rand(1, 3, size, size)
    kp_source = model.kp_detector(source)
    kp_driving = model.kp_detector(driving)
    kp_norm = relative_kp(kp_source, kp_driving, kp_driving)
    dense_motion = model.dense_motion_network(source_image=source, kp_driving=kp_norm, kp_source=kp_source)
    return model.inpainting_network(source, dense_motion)["prediction"]


@pytest.mark.parametrize("name", PUBLISHED)
def test_every_published_layout_loads_and_renders_a_frame(name, tmp_path):
    manifest = _manifest(name)
    path = tmp_path / f"{name.split('-')[0]}.pth.tar"
    torch.save({**_random_parts(manifest), **OPTIMIZERS}, path)
    side = int(name.split("-")[1])
    config = tmp_path / f"{name}.yaml"
    config.write_text(f"dataset_params:\n  frame_shape: [{side}, {side}, 3]\n")  # as the published configs
    model = load_checkpoint(path, config=config)
    assert model.family == "tpsmm" and model.frame_shape == (side, side)
    assert model.config == manifest["model_params"]
    counts = {name: sum(p.numel() for p in network.parameters()) for name, network in model.named_children()}
    assert counts == manifest["params"]
    assert model.modes == ("relative", "absolute", "avd")
    assert model.background_motion == ("bg_predictor" in manifest["params"])
    prediction = _render_one_frame(model, model.size_multiple)  # the smallest frame the layout allows
    assert prediction.shape == (1, 3, 128, 128) and torch.isfinite(prediction).all()


def test_without_a_frame_size_published_files_render_at_256(tmp_path):
    path = tmp_path / "mgif.pth.tar"
    torch.save({**_random_parts(_manifest("mgif-256")), **OPTIMIZERS}, path)
    assert load_checkpoint(path).frame_shape == (256, 256)


def test_an_untrained_avd_network_is_not_offered(tmp_path):
    path = tmp_path / "untrained-avd.pth.tar"
    torch.save(_random_parts(_manifest("mgif-256"), batches_seen=0), path)
    model = load_checkpoint(path)
    assert model.modes == ("relative", "absolute") and not model.avd_trained


def _small_parts() -> dict[str, dict]:
    data = torch.load(need_shared(TPSMM / "tpsmm-small-nobg.pth.tar"), weights_only=True)
    return {k: v for k, v in data.items() if k not in ("optimizer", "epoch")}


def test_a_file_without_an_avd_network_offers_the_other_modes(tmp_path):
    parts = _small_parts()
    del parts["avd_network"]
    torch.save(parts, tmp_path / "m.pth.tar")
    model = load_checkpoint(tmp_path / "m.pth.tar")
    assert model.avd_network is None and model.modes == ("relative", "absolute")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: p.pop("inpainting_network"), "no 'inpainting_network' state dict"),
        (
            lambda p: p["kp_detector"].update({"fg_encoder.fc.weight": torch.zeros(21, 512)}),
            "not 5 .x, y. points",
        ),
        (
            lambda p: p["inpainting_network"].update({"final.weight": torch.zeros(3, 8, 7, 7)}),
            r"inpainting_network: wrong shape final\.weight",
        ),
        (lambda p: p["avd_network"].update({"extra": torch.zeros(1)}), r"avd_network: unexpected extra"),
        (lambda p: p["bg_predictor"].update({"note": "hello"}), r"bg_predictor\.note is not a tensor"),
        (
            lambda p: [
                p["dense_motion_network"].pop(f"occlusion.{i}.{t}")
                for i in (1, 2, 3)
                for t in ("weight", "bias")
            ],
            "1 occlusion masks; only the published multi-resolution design",
        ),
        (
            lambda p: p["dense_motion_network"].update({"down.weight": torch.full((3, 1, 13, 13), 1 / 169)}),
            "not the Gaussian of a 1/4 downsampling",
        ),
    ],
)
def test_bad_files_are_refused_with_a_reason(tmp_path, edit, message):
    parts = _small_parts()
    parts["bg_predictor"] = torch.load(TPSMM / "tpsmm-small.pth.tar", weights_only=True)["bg_predictor"]
    edit(parts)
    path = tmp_path / "bad.pth.tar"
    torch.save(parts, path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_a_frame_size_the_architecture_cannot_halve_is_refused(tmp_path):
    torch.save({**_small_parts(), "frame_shape": [64, 72]}, tmp_path / "m.pth.tar")
    with pytest.raises(CheckpointError, match=r"frame_shape \[64, 72\] is not a multiple of 32"):
        load_checkpoint(tmp_path / "m.pth.tar")


def test_saving_keeps_the_published_layout_and_our_frame_size(tmp_path):
    torch.save(_small_parts(), tmp_path / "m.pth.tar")
    model = load_checkpoint(tmp_path / "m.pth.tar")
    model.frame_shape = (64, 96)
    save_checkpoint(tmp_path / "again.pth.tar", model)
    again = load_checkpoint(tmp_path / "again.pth.tar")
    assert again.frame_shape == (64, 96) and again.config == model.config
    for name, network in model.named_children():
        theirs = getattr(again, name).state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in network.state_dict().items()), name


def test_the_small_fixture_renders_non_square_frames_with_every_map_at_its_size():
    model = load_checkpoint(need_shared(TPSMM / "tpsmm-small.pth.tar"))
    source, driving = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        kp_source, kp_driving = model.kp_detector(source), model.kp_detector(driving)
        motion = model.dense_motion_network(
            source_image=source,
            kp_driving=kp_driving,
            kp_source=kp_source,
            bg_param=model.bg_predictor(source, driving),
        )
        out = model.inpainting_network(source, motion)
    assert motion["deformation"].shape == (1, 16, 24, 2)
    assert [tuple(m.shape[2:]) for m in out["occlusion_map"]] == [(8, 12), (16, 24), (32, 48), (64, 96)]
    assert out["prediction"].shape == out["deformed"].shape == (1, 3, 64, 96)
