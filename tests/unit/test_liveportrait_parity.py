"""Our LivePortrait networks, wrapper methods and motion transfer compute the published functions:
every golden array of the reference (../shared/liveportrait) matches, float64 to 1e-9 and float32
within the fixtures' tolerances, in all 17 option combinations."""

import json

import numpy as np
import pytest
import torch

from engine.families.liveportrait import (
    calc_eye_close_ratio,
    calc_lip_close_ratio,
    calc_motion_multiplier,
    load_liveportrait,
    prepare_images,
)
from engine.families.liveportrait.motion import compose_driving_keypoints, lip_delta_before_animation
from tests.conftest import SHARED, need_shared

FIXTURES = SHARED / "liveportrait"
FOLDER = FIXTURES / "liveportrait-shared"
INPUTS = (
    "source_u8",
    "driving_u8",
    "source_lmk",
    "driving_lmk",
    "warp_rand/kp_source",
    "warp_rand/kp_driving",
)
INPUTS += ("mlp/stitching/in", "mlp/lip/in", "mlp/eye/in")
ANGLES = ("pitch", "yaw", "roll")


def f32_tolerance(name: str) -> float:
    """The fixture JSON's float32 tolerances by kind of array. The raw pose logits are listed under
    none of its kinds; their own float32 rounding noise (6e-5) exceeds the keypoints' 5e-5, so they
    count as network features (5e-4)."""
    leaf = name.rsplit("/", 1)[-1]
    if name.endswith("out_u8"):
        return 1
    if name.startswith("kp_info/") and leaf in ANGLES:
        return 2e-3
    if name.startswith("mlp/"):
        return 5e-5
    if name.startswith(("afe/", "warp_rand/", "spade_rand/")) or leaf in (
        "occlusion_map",
        "deformation",
        "out",
    ):
        return 5e-4
    if name.startswith("me/raw/") and leaf in ANGLES:
        return 5e-4
    return 5e-5


PRECISIONS = {"float64": ("-f64", torch.float64), "float32": ("", torch.float32)}


def _options(mode: dict) -> dict:
    """transfer_motion's keywords for a mode of the fixture JSON (the published flag names)."""
    return {
        "relative": mode["flag_relative_motion"],
        "region": mode["animation_region"],
        "stitching": mode["flag_stitching"],
        "multiplier": mode["driving_multiplier"],
        "driving_option": mode["driving_option"],
        "eye_retargeting": mode["flag_eye_retargeting"],
        "lip_retargeting": mode["flag_lip_retargeting"],
        "normalize_lip": mode["flag_normalize_lip"],
    }


def _networks(model, inputs, dtype) -> dict:
    """F, M (raw, one call per frame as the reference), kp_info, rotations, transformed keypoints,
    W and G on the random keypoints, the three MLPs on their random inputs."""
    frames = torch.cat(
        [prepare_images(inputs["source_u8"], dtype), prepare_images(inputs["driving_u8"], dtype)]
    )
    out = {"source": frames[:1], "driving": frames[1:], "afe/f_s": model.extract_feature_3d(frames[:1])}
    raw = [model.get_kp_info(frames[i : i + 1], flag_refine_info=False) for i in range(frames.shape[0])]
    out |= {f"me/raw/{k}": torch.cat([r[k] for r in raw]) for k in raw[0]}
    kp_info = model.get_kp_info(frames)
    out |= {f"kp_info/{k}": v for k, v in kp_info.items()}
    out |= {"rot": model.rotation_matrix(kp_info), "x": model.transform_keypoint(kp_info)}
    kp_source, kp_driving = (
        torch.from_numpy(inputs[f"warp_rand/{k}"]).to(dtype) for k in ("kp_source", "kp_driving")
    )
    dense = model.warping_module.dense_motion_network(out["afe/f_s"], kp_driving, kp_source)
    warped = model.warping_module(out["afe/f_s"], kp_driving=kp_driving, kp_source=kp_source)
    out |= {"warp_rand/mask": dense["mask"], **{f"warp_rand/{k}": v for k, v in warped.items()}}
    out["spade_rand/out"] = model.spade_generator(warped["out"])
    for name in ("stitching", "lip", "eye"):
        mlp_in = torch.from_numpy(inputs[f"mlp/{name}/in"]).to(dtype)
        out[f"mlp/{name}/out"] = model.stitching_retargeting_module[name](mlp_in)
    return out | {"kp_info": kp_info}


def _ratios(inputs) -> dict:
    return {
        "source_eye_ratio": calc_eye_close_ratio(inputs["source_lmk"][None]),
        "source_lip_ratio": calc_lip_close_ratio(inputs["source_lmk"][None]),
        "driving_eye_ratios": calc_eye_close_ratio(inputs["driving_lmk"]),
        "driving_lip_ratios": calc_lip_close_ratio(inputs["driving_lmk"]),
    }


def _pipeline_steps(model, kp_info, ratios, lmk) -> dict:
    """Stitching on the driving frames' keypoints, the close ratios, the retargeting MLPs' inputs
    (as the published calc_combined_*_ratio build them, frame by frame) and their outputs."""
    source = {k: v[:1] for k, v in kp_info.items()}
    x_s, x_d = (
        model.transform_keypoint(source),
        model.transform_keypoint({k: v[1:] for k, v in kp_info.items()}),
    )
    frames = x_d.shape[0]
    eye_in = torch.cat(
        [model.calc_combined_eye_ratio(ratios["driving_eye_ratios"][i : i + 1], lmk) for i in range(frames)]
    )
    lip_in = torch.cat(
        [model.calc_combined_lip_ratio(ratios["driving_lip_ratios"][i], lmk) for i in range(frames)]
    )
    return {
        "stitching/delta": model.stitch(x_s, x_d),
        "stitching/kp": model.stitching(x_s, x_d),
        "ratios/source_eye": ratios["source_eye_ratio"],
        "ratios/source_lip": ratios["source_lip_ratio"],
        "ratios/driving_eye": ratios["driving_eye_ratios"],
        "ratios/driving_lip": ratios["driving_lip_ratios"],
        "retarget/eye_in": eye_in,
        "retarget/eye_delta": model.retarget_eye(x_s, eye_in),
        "retarget/lip_in": lip_in,
        "retarget/lip_delta": model.retarget_lip(x_s, lip_in),
    }


def _modes(model, kp_info, f_s, ratios, modes: dict) -> dict:
    """Every mode's driving keypoints; its motion multiplier and lip normalisation where the
    reference recorded them; the rendered mode's warp, decoder output and uint8 frames."""
    source, driving = {k: v[:1] for k, v in kp_info.items()}, {k: v[1:] for k, v in kp_info.items()}
    x_s = model.transform_keypoint(source)
    out = {}
    for name, mode in modes.items():
        options = _options(mode)
        x_d = model.transfer_motion(source, driving, **options, **ratios)
        out[f"{name}/kp_driving_new"] = x_d
        if options["relative"] and options["driving_option"] == "expression-friendly":
            composed = compose_driving_keypoints(
                model, source, driving, relative=True, region=options["region"]
            )
            out[f"{name}/motion_multiplier"] = np.float64(calc_motion_multiplier(x_s, composed[:1]))
        if options["normalize_lip"]:
            out[f"{name}/lip_delta_before_animation"] = lip_delta_before_animation(
                model, x_s, ratios["source_lip_ratio"]
            )
        if mode["rendered"]:
            rendered = model.warp_decode(f_s, x_s, x_d)
            out |= {f"{name}/{k}": v for k, v in rendered.items()}
            out[f"{name}/out_u8"] = model.parse_output(rendered["out"])
    return out


def _compare(name: str, ours, golden: np.ndarray, tolerance: float) -> None:
    ours = ours.detach().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    assert ours.shape == golden.shape, f"{name}: shape {ours.shape}, expected {golden.shape}"
    error = float(np.abs(ours.astype(np.float64) - golden.astype(np.float64)).max())
    assert error <= tolerance, f"{name}: max abs error {error:.2e} > {tolerance:.0e}"


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads(need_shared(FIXTURES / "liveportrait-shared.json").read_text())


@pytest.fixture(scope="module")
def inputs() -> dict:
    return dict(np.load(need_shared(FIXTURES / "liveportrait-shared.npz")))


def test_the_architecture_read_off_the_tensors_is_the_fixture_configuration(meta, tmp_path):
    """With the folder's models.yaml the published config exactly; without it, the same networks:
    only the backbone's name (a label the tensors cannot tell) differs."""
    assert load_liveportrait(need_shared(FOLDER)).config == meta["model_params"]
    for part in ("base_models", "retargeting_models"):
        (tmp_path / part).symlink_to(FOLDER / part)
    inferred = load_liveportrait(tmp_path).config
    assert inferred["motion_extractor_params"].pop("backbone") == "convnextv2"
    expected = json.loads(json.dumps(meta["model_params"]))
    del expected["motion_extractor_params"]["backbone"]
    assert inferred == expected


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_golden_array_matches(precision, meta, inputs):
    suffix, dtype = PRECISIONS[precision]
    golden = np.load(need_shared(FIXTURES / f"liveportrait-shared{suffix}.npz"))
    model = load_liveportrait(FOLDER).to(dtype)
    ours = _networks(model, inputs, dtype)
    kp_info, f_s = ours.pop("kp_info"), ours["afe/f_s"]
    ratios = _ratios(inputs)
    ours |= _pipeline_steps(model, kp_info, ratios, inputs["source_lmk"])
    ours |= _modes(model, kp_info, f_s, ratios, meta["modes"])
    if precision == "float64":
        ours.pop("rel_expr_stitch/out_u8")  # recorded from the float32 run only
    expected = set(golden.files) - set(INPUTS)
    assert set(ours) == expected, "every golden array is computed, and nothing else"
    for name in sorted(expected):
        tolerance = 1e-9 if precision == "float64" else f32_tolerance(name)
        _compare(name, ours[name], golden[name], tolerance)


def test_the_f32_tolerances_are_the_fixture_json_ones(meta):
    """The per-kind tolerances above are those the fixture JSON states in words."""
    stated = meta["tolerances"]["float32"]
    for value in ("2e-3 on angles", "5e-5 on keypoints", "5e-4 on features", "1 on out_u8"):
        assert value in stated
    assert "1e-9" in meta["tolerances"]["float64"]


def test_a_driving_video_in_chunks_gets_the_keypoints_of_one_call(meta, inputs):
    """Every mode, frames [0] and [1, 2] as two calls given the first frame's kp_info: what a
    renderer streaming a long video does."""
    model = load_liveportrait(need_shared(FOLDER))
    frames = torch.cat([prepare_images(inputs["source_u8"]), prepare_images(inputs["driving_u8"])])
    kp_info = model.get_kp_info(frames)
    source, driving = {k: v[:1] for k, v in kp_info.items()}, {k: v[1:] for k, v in kp_info.items()}
    ratios = _ratios(inputs)
    for name, mode in meta["modes"].items():
        whole = model.transfer_motion(source, driving, **_options(mode), **ratios)
        chunks = []
        for rows in (slice(0, 1), slice(1, 3)):
            chunk_ratios = ratios | {k: ratios[k][rows] for k in ("driving_eye_ratios", "driving_lip_ratios")}
            chunk = {k: v[rows] for k, v in driving.items()}
            first = {k: v[:1] for k, v in driving.items()}
            chunks.append(
                model.transfer_motion(source, chunk, **_options(mode), **chunk_ratios, driving_initial=first)
            )
        _compare(name, torch.cat(chunks), whole.numpy(), 1e-6)
