"""LivePortrait's motion transfer: the driving keypoints of every frame of a driving video for one
source image, as the published pipeline's animate loop computes them, all frames at once.

Per frame i (relative motion, region "all"): R = R_d,i R_d,0^T R_s, exp = exp_s + exp_d,i -
exp_d,0, s = s_s s_d,i / s_d,0, t = t_s + t_d,i - t_d,0 with t_z = 0, and x_d = s (kp_s R + exp) + t.
Then the "expression-friendly" rescaling, stitching or eye/lip retargeting (the paper's Algorithm
1), the lip normalisation, and the motion multiplier around the source keypoints.
"""

import numpy as np
import torch

from engine.families.liveportrait.regions import REGIONS, driving_expression_mask

DRIVING_OPTIONS = ("expression-friendly", "pose-friendly")
LIP_NORMALIZE_THRESHOLD = 0.03  # the published lip_normalize_threshold on the source lip ratio


def calc_motion_multiplier(kp_source: torch.Tensor, kp_driving_initial: torch.Tensor) -> float:
    """sqrt of the ratio of the volumes of the keypoints' 3-D convex hulls, source over the first
    driving frame's, (1, K, 3) each. Where either hull is flat (which the published code does not
    survive), 1: the motion is left unscaled. SciPy is imported here, not with the module: every
    process that loads the family registry would pay its 0.3 s, whatever family it serves."""
    from scipy.spatial import ConvexHull, QhullError

    try:
        source = ConvexHull(kp_source.detach().cpu().double().numpy().reshape(-1, 3)).volume
        driving = ConvexHull(kp_driving_initial.detach().cpu().double().numpy().reshape(-1, 3)).volume
    except QhullError:
        return 1.0
    return float(np.sqrt(source) / np.sqrt(driving)) if source > 0 and driving > 0 else 1.0


def compose_driving_keypoints(
    model,
    source_info: dict,
    driving_infos: dict,
    *,
    relative: bool = True,
    region: str = "all",
    driving_initial: dict | None = None,
) -> torch.Tensor:
    """x_d (T, K, 3) = s (kp_s R + exp) + t from the source's and the driving frames' kp_info
    (`get_kp_info` outputs, 1 and T rows), before any rescaling, stitching or retargeting.
    Relative motion is measured from `driving_initial` (1 row), by default the first driving frame."""
    kp_s, exp_s = source_info["kp"], source_info["exp"]  # (1, K, 3)
    exp_d, scale_d, t_d = driving_infos["exp"], driving_infos["scale"], driving_infos["t"]
    rot_s = model.rotation_matrix(source_info)  # (1, 3, 3)
    rot_d = model.rotation_matrix(driving_infos)  # (T, 3, 3)
    initial = driving_infos if driving_initial is None else driving_initial
    rot_0 = rot_d[:1] if driving_initial is None else model.rotation_matrix(driving_initial)
    pose = region in ("all", "pose")
    if relative:
        rot = (rot_d @ rot_0.transpose(1, 2)) @ rot_s if pose else rot_s
        driven_exp = exp_s + (exp_d - initial["exp"][:1])
        scale = (
            source_info["scale"] * (scale_d / initial["scale"][:1])
            if region == "all"
            else source_info["scale"]
        )
        t = source_info["t"] + (t_d - initial["t"][:1]) if pose else source_info["t"]
    else:
        rot, driven_exp, scale = (rot_d if pose else rot_s), exp_d, source_info["scale"]
        t = t_d if pose else source_info["t"]
    mask = torch.from_numpy(driving_expression_mask(region, kp_s.shape[1], relative)).to(exp_s.device)
    delta = torch.where(mask, driven_exp, exp_s)
    t = torch.cat([t[:, :2], torch.zeros_like(t[:, 2:])], dim=1)  # t_z is never used
    x_d = scale[..., None] * (kp_s @ rot + delta) + t[:, None, :]
    return x_d.expand(exp_d.shape[0], *x_d.shape[1:])


def _ratios(values, rows: int | None, columns: int, like: torch.Tensor, name: str) -> torch.Tensor:
    """Close ratios (rows, columns) as a tensor in the keypoints' dtype, the shape checked."""
    if values is None:
        raise ValueError(f"this option needs {name}, measured on the 203 landmarks")
    array = np.asarray(
        values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64
    )
    expected = rows if rows is not None else 1
    if array.size != expected * columns:
        raise ValueError(f"{name}: {array.size} values, expected {expected} x {columns}")
    return torch.from_numpy(array.reshape(expected, columns)).to(like)


def lip_delta_before_animation(model, x_s: torch.Tensor, source_lip_ratio) -> torch.Tensor | None:
    """The lip normalisation: the lip retargeting offsets (1, K, 3) that close the source's lips
    (driving ratio 0), where the source's lips are open (ratio >= 0.03); else None."""
    source = _ratios(source_lip_ratio, None, 1, x_s, "the source lip ratio")
    if source[0, 0] < LIP_NORMALIZE_THRESHOLD:
        return None
    return model.retarget_lip(x_s, torch.cat([source, torch.zeros_like(source)], dim=1))


def retargeting_inputs(x_s: torch.Tensor, frames: int, ratios: dict, eye: bool, lip: bool) -> tuple:
    """The eye MLP's input (T, 3) = [source left, source right, driving left] and the lip MLP's
    (T, 2) = [source, driving], each None where that retargeting is off."""
    eye_in = lip_in = None
    if eye:
        source = _ratios(ratios["source_eye_ratio"], None, 2, x_s, "the source eye ratios")
        driving = _ratios(ratios["driving_eye_ratios"], frames, 2, x_s, "the driving eye ratios")
        eye_in = torch.cat([source.expand(frames, 2), driving[:, :1]], dim=1)
    if lip:
        source = _ratios(ratios["source_lip_ratio"], None, 1, x_s, "the source lip ratio")
        driving = _ratios(ratios["driving_lip_ratios"], frames, 1, x_s, "the driving lip ratios")
        lip_in = torch.cat([source.expand(frames, 1), driving], dim=1)
    return eye_in, lip_in


def stitch_and_retarget(model, x_s, x_d, relative, stitching, eye_in, lip_in, lip_delta) -> torch.Tensor:
    """The paper's Algorithm 1 as published: without retargeting, stitching and the lip
    normalisation offsets; with it, the eye and lip offsets added to x_s (relative motion: the
    driving motion is dropped) or to x_d (absolute), then stitching."""
    if eye_in is None and lip_in is None:
        x_d = model.stitching(x_s, x_d) if stitching else x_d
        return x_d if lip_delta is None else x_d + lip_delta
    x_d = x_s if relative else x_d
    if eye_in is not None:
        x_d = x_d + model.retarget_eye(x_s, eye_in)
    if lip_in is not None:
        x_d = x_d + model.retarget_lip(x_s, lip_in)
    return model.stitching(x_s, x_d) if stitching else x_d


def _check_options(region: str, driving_option: str) -> None:
    if region not in REGIONS:
        raise ValueError(f"unknown animation region {region!r}; one of {', '.join(REGIONS)}")
    if driving_option not in DRIVING_OPTIONS:
        raise ValueError(f"unknown driving option {driving_option!r}; one of {', '.join(DRIVING_OPTIONS)}")


@torch.no_grad()
def transfer_motion(
    model,
    source_info: dict,
    driving_infos: dict,
    *,
    relative: bool = True,
    region: str = "all",
    stitching: bool = True,
    multiplier: float = 1.0,
    driving_option: str = "expression-friendly",
    eye_retargeting: bool = False,
    lip_retargeting: bool = False,
    normalize_lip: bool = False,
    source_eye_ratio=None,
    source_lip_ratio=None,
    driving_eye_ratios=None,
    driving_lip_ratios=None,
    driving_initial: dict | None = None,
) -> torch.Tensor:
    """Driving keypoints (T, K, 3) for `warp_decode(f_s, x_s, ...)`, from the source's kp_info (1
    row) and the driving frames' (T rows), with the published options: relative or absolute motion,
    animation region, driving_option, stitching, eye/lip retargeting (which, with relative motion,
    replace the driving motion by the source's retargeted keypoints), lip normalisation (relative
    motion, no retargeting) and the driving multiplier. Ratios: `regions.calc_eye_close_ratio` (1, 2)
    and (T, 2), `regions.calc_lip_close_ratio` (1, 1) and (T, 1). A long video goes in chunks, each
    with the first frame's kp_info as `driving_initial` (the same keypoints as in one call)."""
    _check_options(region, driving_option)
    x_s = model.transform_keypoint(source_info)  # (1, K, 3)
    compose = {"relative": relative, "region": region, "driving_initial": driving_initial}
    x_d = compose_driving_keypoints(model, source_info, driving_infos, **compose)
    if relative and driving_option == "expression-friendly":
        first = (
            x_d[:1]
            if driving_initial is None
            else compose_driving_keypoints(model, source_info, driving_initial, **compose)
        )
        x_d = (x_d - first) * calc_motion_multiplier(x_s, first) + x_s
    ratios = {
        "source_eye_ratio": source_eye_ratio,
        "source_lip_ratio": source_lip_ratio,
        "driving_eye_ratios": driving_eye_ratios,
        "driving_lip_ratios": driving_lip_ratios,
    }
    eye_in, lip_in = retargeting_inputs(x_s, x_d.shape[0], ratios, eye_retargeting, lip_retargeting)
    normalizing = normalize_lip and relative and not (eye_retargeting or lip_retargeting)
    lip_delta = lip_delta_before_animation(model, x_s, source_lip_ratio) if normalizing else None
    x_d = stitch_and_retarget(model, x_s, x_d, relative, stitching, eye_in, lip_in, lip_delta)
    return x_s + (x_d - x_s) * multiplier
