"""What ties LivePortrait's pipeline to the published keypoints and landmarks: the expression rows
each animation region takes from the driving frames, and the eye and lip close ratios measured on
the 203 landmarks of the published `landmark.onnx`.

The row indices are the published pipeline's, for its 21 keypoints; a model with another keypoint
count can be animated only in the modes that do not need them.
"""

import numpy as np

PUBLISHED_NUM_KP = 21
REGIONS = ("all", "exp", "pose", "lip", "eyes")
LIP_ROWS = (6, 12, 14, 17, 19, 20)
EYE_ROWS = (11, 13, 15, 16, 18)
# Absolute motion, regions "all" and "exp": whole driving rows, plus single driving components.
EXPRESSION_ROWS = (1, 2, 6, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20)
EXPRESSION_COMPONENTS = ((3, 1), (4, 1), (5, 2), (8, 2), (9, 1), (9, 2))  # (row, axis)

# Landmark pairs (of the 203) whose distance ratios measure how open the eyes and lips are.
LEFT_EYE = (6, 18, 0, 12)
RIGHT_EYE = (30, 42, 24, 36)
LIPS = (90, 102, 48, 66)


def driving_expression_mask(region: str, num_kp: int, relative: bool) -> np.ndarray:
    """(K, 3) booleans: which expression components come from the driving frame (True) rather than
    the source. Relative "all" and "exp" take every one, "pose" none: those need no indices."""
    if region not in REGIONS:
        raise ValueError(f"unknown animation region {region!r}; one of {', '.join(REGIONS)}")
    if region == "pose" or (relative and region in ("all", "exp")):
        return np.full((num_kp, 3), region != "pose")
    if num_kp != PUBLISHED_NUM_KP:
        raise ValueError(
            f"{'relative' if relative else 'absolute'} motion of region {region!r} uses the published "
            f"keypoint indices, which need {PUBLISHED_NUM_KP} keypoints; this model has {num_kp}"
        )
    mask = np.zeros((num_kp, 3), dtype=bool)
    if region == "lip":
        mask[list(LIP_ROWS)] = True
    elif region == "eyes":
        mask[list(EYE_ROWS)] = True
    else:
        mask[list(EXPRESSION_ROWS)] = True
        for row, axis in EXPRESSION_COMPONENTS:
            mask[row, axis] = True
    return mask


def _distance_ratio(lmk: np.ndarray, pairs: tuple[int, int, int, int], eps: float = 1e-6) -> np.ndarray:
    a, b, c, d = pairs
    numerator = np.linalg.norm(lmk[:, a] - lmk[:, b], axis=1, keepdims=True)
    return numerator / (np.linalg.norm(lmk[:, c] - lmk[:, d], axis=1, keepdims=True) + eps)


def calc_eye_close_ratio(lmk: np.ndarray) -> np.ndarray:
    """(N, 203, 2) landmarks -> (N, 2) left and right eye opening over eye width."""
    return np.concatenate([_distance_ratio(lmk, LEFT_EYE), _distance_ratio(lmk, RIGHT_EYE)], axis=1)


def calc_lip_close_ratio(lmk: np.ndarray) -> np.ndarray:
    """(N, 203, 2) landmarks -> (N, 1) lip opening over mouth width."""
    return _distance_ratio(lmk, LIPS)
