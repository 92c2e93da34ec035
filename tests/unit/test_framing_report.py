"""What a render says about its framing: which crop of the photo and of the driving video, and why."""

import numpy as np
import pytest

from engine.subject.autocrop import CropPlan
from engine.subject.box import Box
from engine.subject.framing import framing_report


def plan(kind: str, boxes: list[tuple[float, float, float, float]], width: int = 640, height: int = 480):
    return CropPlan(kind, np.array(boxes, np.float64), width, height)


FOLLOWED = plan("face", [(100, 50, 200, 200), (104, 52, 200, 200)])
NO_FACE = plan("none", [(80, 0, 480, 480)] * 2)
NO_FACE_SQUARE = plan("none", [(0, 0, 480, 480)] * 2, width=480)


@pytest.mark.parametrize(
    ("spec", "found", "whole", "driving", "expected"),
    [
        ("auto", "face", False, FOLLOWED, ("face", "face", True)),
        ("auto", "body", False, FOLLOWED, ("body", "face", True)),
        ("auto", "face", True, FOLLOWED, ("whole", "face", True)),
        ("auto", "none", True, FOLLOWED, ("whole", "face", False)),
        ("auto", "none", False, NO_FACE, ("centre", "centre", False)),
        ("face", "none", True, NO_FACE_SQUARE, ("whole", "whole", False)),
        ("none", "none", True, None, ("whole", "whole", None)),
        (Box(10, 10, 100, 100), "none", False, FOLLOWED, ("box", "face", None)),
    ],
)
def test_each_framing_is_named_with_its_reason(spec, found, whole, driving, expected):
    report = framing_report(spec, found, whole, driving)
    assert (report.source, report.driving, report.subject_found) == expected
    photo, video = report.reason.split("; ")
    assert ("no face found in the photo" in photo) == (report.subject_found is False)
    assert ("no face found in the driving video" in video) == (driving is not None and driving.kind == "none")
    assert (report.warning is not None) == (report.subject_found is False)


def test_no_face_in_the_photo_is_a_warning_that_says_what_is_animated():
    report = framing_report("auto", "none", True, FOLLOWED)
    assert report.reason == (
        "no face found in the photo: the whole picture is animated; "
        "the driving video: a square following its face"
    )
    assert report.warning == (
        "no face found in the photo: the whole picture is animated, background included, "
        "so the background moves with the driving motion"
    )
    forced = framing_report("body", "none", False, FOLLOWED)
    assert forced.reason.startswith("crop body: no face found in the photo: the picture's centre square")
