"""Loading LivePortrait's published folder: the published layouts (manifests of the real files) load
with every size read off the tensors; other sizes (keypoint count, widths, non-square frames) flow
end to end; broken, foreign or hostile folders are refused with a reason."""

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.families.liveportrait import (
    build_model,
    describe,
    describe_liveportrait,
    is_liveportrait_folder,
    load_liveportrait,
    prepare_images,
    save_liveportrait,
)
from engine.state_dict import CheckpointError
from tests.conftest import SHARED, need_shared

FIXTURES = SHARED / "liveportrait"
FOLDER = FIXTURES / "liveportrait-shared"
BASE = "liveportrait/base_models"
STITCHING = "liveportrait/retargeting_models/stitching_retargeting_module.pth"


def _manifest() -> dict:
    return json.loads(need_shared(FIXTURES / "liveportrait-official-manifests.json").read_text())


def _tensors(keys: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of the manifest's shapes and dtypes, all views of one random storage: the file holds
    it once, so the published sizes cost what their largest tensor does."""
    largest = max(int(np.prod(spec["shape"])) for spec in keys.values())
    storage = torch.randn(largest) * 0.02
    state = {}
    for key, spec in keys.items():
        if spec["dtype"] == "int64":
            state[prefix + key] = torch.zeros(spec["shape"], dtype=torch.int64)
        else:
            state[prefix + key] = storage[: int(np.prod(spec["shape"]))].view(spec["shape"])
    return state


def _published_folder(root: Path, ddp_prefix: bool = True) -> Path:
    """The manifests' five files in the published layout under root/liveportrait/, the stitching file
    with its three entries (keys `module.`-prefixed or not) and other entries as the real one has."""
    for relative, spec in _manifest()["files"].items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if "entries" in spec:
            prefix = "module." if ddp_prefix else ""
            data = {
                entry: _tensors({k.removeprefix("module."): v for k, v in part["keys"].items()}, prefix)
                for entry, part in spec["entries"].items()
            }
            data |= {"optimizer": {"state": {0: torch.zeros(3)}}, "epoch": 7, "note": "more bytes"}
        else:
            data = _tensors(spec["keys"])
        torch.save(data, path)
    return root


@pytest.mark.parametrize("ddp_prefix", [True, False])
def test_the_published_layouts_load_with_their_parameter_counts(tmp_path, ddp_prefix):
    manifest = _manifest()
    model = load_liveportrait(_published_folder(tmp_path, ddp_prefix))
    for relative, spec in manifest["files"].items():
        if "entries" in spec:
            for part in spec["entries"].values():
                mlp = model.stitching_retargeting_module[part["network"]]
                assert sum(p.numel() for p in mlp.parameters()) == part["params"], relative
            continue
        network = getattr(model, spec["network"])
        assert sum(p.numel() for p in network.parameters()) == spec["params"], relative
        assert sum(b.numel() for b in network.buffers()) == spec["buffer_values"], relative
    for part, published in manifest["model_params"].items():  # the published models.yaml
        inferred = model.config[part]
        assert {k: inferred[k] for k in published} == published, part
    info = describe(model)
    assert (info["num_kp"], info["output_shape"], info["size_multiple"]) == (21, [512, 512], 128)
    assert info["feature_volume"] == {"channels": 32, "depth": 16}
    assert info["total_parameters"] == sum(
        spec.get("params", 0) + sum(p["params"] for p in spec.get("entries", {}).values())
        for spec in manifest["files"].values()
    )


def test_folders_are_recognised_by_their_layout(tmp_path):
    assert is_liveportrait_folder(need_shared(FOLDER))
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "liveportrait").symlink_to(FOLDER)
    assert is_liveportrait_folder(tmp_path / "weights")
    assert describe_liveportrait(tmp_path / "weights")["num_kp"] == 21
    assert not is_liveportrait_folder(tmp_path)
    assert not is_liveportrait_folder(FOLDER / "base_models" / "spade_generator.pth")
    (tmp_path / "other" / "base_models").mkdir(parents=True)
    assert not is_liveportrait_folder(tmp_path / "other")


def _copy_of_fixture(tmp_path: Path) -> Path:
    folder = tmp_path / "lp"
    shutil.copytree(need_shared(FOLDER), folder)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def _refused(folder: Path, *fragments: str) -> None:
    with pytest.raises(CheckpointError) as refusal:
        load_liveportrait(folder)
    for fragment in fragments:
        assert fragment in str(refusal.value)


def test_a_missing_file_is_named(tmp_path):
    folder = _copy_of_fixture(tmp_path)
    (folder / "base_models" / "warping_module.pth").unlink()
    _refused(folder, "base_models/warping_module.pth is missing")
    _refused(tmp_path, "not a LivePortrait folder")


def test_a_tensor_of_the_wrong_shape_is_named(tmp_path):
    folder = _copy_of_fixture(tmp_path)
    path = folder / "base_models" / "spade_generator.pth"
    state = torch.load(path, weights_only=True)
    state["G_middle_2.conv_1.weight_v"] = state["G_middle_2.conv_1.weight_v"][:-1]
    torch.save(state, path)
    _refused(folder, "spade_generator", "G_middle_2.conv_1.weight_v", "wrong shape")


def test_networks_that_do_not_belong_together_are_refused(tmp_path):
    """A stitching MLP for another keypoint count, and a stitching file without its eye MLP."""
    folder = _copy_of_fixture(tmp_path)
    (folder / "models.yaml").unlink()  # which would otherwise say what the MLPs should be
    path = folder / "retargeting_models" / "stitching_retargeting_module.pth"
    data = torch.load(path, weights_only=True)
    data["retarget_shoulder"] = {
        k: v[:-3] if k.endswith("mlp.6.weight") or k.endswith("mlp.6.bias") else v
        for k, v in data["retarget_shoulder"].items()
    }
    torch.save(data, path)
    _refused(folder, "stitching MLP maps 126 to 62, not 126 to 65")
    del data["retarget_eye"]
    torch.save(data, path)
    _refused(folder, "retarget_eye", "not a state dict")


class _Payload:
    """Unpickling this runs a shell command: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_hostile_and_foreign_files_are_refused_without_running_code(tmp_path):
    folder = _copy_of_fixture(tmp_path)
    target = folder / "base_models" / "motion_extractor.pth"
    marker = tmp_path / "pwned"
    torch.save({"detector.norm.weight": _Payload(marker)}, target)
    _refused(folder, "motion_extractor.pth is not a readable torch checkpoint")
    assert not marker.exists()
    target.write_bytes(b"\x00not a checkpoint" * 10)
    _refused(folder, "motion_extractor.pth is not a readable torch checkpoint")
    torch.save({"kp_detector": {}, "generator": {}}, target)  # a FOMM-style file where M belongs
    _refused(folder, "motion_extractor", "not a named tensor")
    torch.save({"conv.weight": torch.zeros(3, 3, 1, 1)}, target)
    _refused(folder, "motion_extractor")


def test_a_bad_models_yaml_is_refused(tmp_path):
    folder = _copy_of_fixture(tmp_path)
    (folder / "models.yaml").write_text("- just\n- a list\n")
    _refused(folder, "models.yaml is not a LivePortrait models.yaml")
    (folder / "models.yaml").write_text("model_params:\n  warping_module_params: {num_kp: 20}\n")
    _refused(folder, "warping_module moves 20 keypoints")
    (folder / "models.yaml").write_text(
        "model_params:\n  appearance_feature_extractor_params: {num_resblocks: x}\n"
    )
    _refused(folder, "invalid LivePortrait model config")


def _other_sizes(config: dict) -> dict:
    """The loader's own config with another keypoint count, other widths and depths everywhere, no
    3-D blocks in F, no occlusion map, and a decoder without the pixel shuffle."""
    config = copy.deepcopy(config)
    k = 10
    config["appearance_feature_extractor_params"] |= {
        "block_expansion": 4,
        "max_features": 24,
        "reshape_channel": 6,
    }
    config["appearance_feature_extractor_params"] |= {"reshape_depth": 4, "num_resblocks": 0}
    config["motion_extractor_params"] |= {"num_kp": k, "depths": [1, 2, 1], "dims": [6, 12, 20]}
    dense = {"block_expansion": 3, "max_features": 12, "num_blocks": 3, "reshape_depth": 4, "compress": 3}
    config["warping_module_params"] |= {"num_kp": k, "max_features": 24, "reshape_channel": 6}
    config["warping_module_params"] |= {"block_expansion": 5, "num_down_blocks": 0}
    config["warping_module_params"] |= {"estimate_occlusion_map": False, "dense_motion_params": dense}
    config["spade_generator_params"] |= {"upscale": 1, "block_expansion": 5, "num_down_blocks": 0}
    config["spade_generator_params"] |= {"max_features": 24, "out_channels": 7}
    mlps = config["stitching_retargeting_module_params"]
    mlps["stitching"] = {"input_size": 6 * k, "hidden_sizes": [20, 12], "output_size": 3 * k + 2}
    mlps["lip"] = {"input_size": 3 * k + 2, "hidden_sizes": [9], "output_size": 3 * k}
    mlps["eye"] = {"input_size": 3 * k + 3, "hidden_sizes": [11, 7, 5], "output_size": 3 * k}
    return config


def test_other_sizes_and_non_square_frames_flow_end_to_end(tmp_path):
    """A random model of other sizes, saved in the published layout, loads back with the same
    config read off its tensors and computes the same, on a 64 x 96 frame."""
    config = _other_sizes(load_liveportrait(need_shared(FOLDER)).config)
    torch.manual_seed(0)
    model = build_model(config, spade_hidden=16).eval()
    save_liveportrait(model, tmp_path / "other")
    (tmp_path / "other" / "models.yaml").unlink()  # everything from the tensors
    loaded = load_liveportrait(tmp_path / "other")
    config["motion_extractor_params"]["backbone"] = "convnextv2"
    assert loaded.config == config
    assert loaded.spade_generator.G_middle_0.norm_0.mlp_shared[0].out_channels == 16

    frames = np.random.default_rng(0).integers(0, 256, (4, 64, 96, 3), dtype=np.uint8)
    images = prepare_images(frames)
    assert loaded.size_multiple == 32 and loaded.output_shape((64, 96)) == (64, 96)
    results = []
    for network in (model, loaded):
        f_s = network.extract_feature_3d(images[:1])
        kp_info = network.get_kp_info(images)
        source, driving = {k: v[:1] for k, v in kp_info.items()}, {k: v[1:] for k, v in kp_info.items()}
        x_d = network.transfer_motion(source, driving, stitching=True)
        results.append((f_s, x_d, network.warp_decode(f_s, network.transform_keypoint(source), x_d)))
    (f_s, x_d, out), (f_s2, x_d2, out2) = results
    assert f_s.shape == (1, 6, 4, 16, 24) and x_d.shape == (3, 10, 3)
    assert out["occlusion_map"] is None and out["deformation"].shape == (3, 4, 16, 24, 3)
    assert out["out"].shape == (3, 3, 64, 96)
    assert torch.equal(f_s, f_s2) and torch.equal(x_d, x_d2) and torch.equal(out["out"], out2["out"])


def test_motion_options_the_model_cannot_do_are_refused():
    """The published region indices need 21 keypoints; retargeting needs the close ratios."""
    config = _other_sizes(load_liveportrait(need_shared(FOLDER)).config)
    model = build_model(config).eval()
    images = prepare_images(np.zeros((3, 64, 64, 3), dtype=np.uint8))
    kp_info = model.get_kp_info(images)
    source, driving = {k: v[:1] for k, v in kp_info.items()}, {k: v[1:] for k, v in kp_info.items()}
    for options in ({"region": "lip"}, {"region": "eyes"}, {"relative": False}):
        with pytest.raises(ValueError, match="need 21 keypoints; this model has 10"):
            model.transfer_motion(source, driving, **options)
    assert model.transfer_motion(source, driving, region="pose").shape == (2, 10, 3)
    with pytest.raises(ValueError, match="unknown animation region"):
        model.transfer_motion(source, driving, region="hair")
    with pytest.raises(ValueError, match="needs the driving eye ratios"):
        model.transfer_motion(source, driving, eye_retargeting=True, source_eye_ratio=[[0.3, 0.3]])
    with pytest.raises(ValueError, match="expected 2 x 1"):
        model.transfer_motion(
            source, driving, lip_retargeting=True, source_lip_ratio=0.2, driving_lip_ratios=[0.1]
        )
