"""The extent of a whole person, from their face and the skin blobs of their limbs.

Proportions anchor the estimate (a standing adult measures about ten Haar face boxes from the top
of the head to the soles; shoulders are about three wide); skin blobs near the body widen or
lengthen it where arms or legs reach further. A clothed body shows little skin, so the proportions
alone must already give a usable box.
"""

from engine.subject.box import Box
from engine.subject.skin import Blob

HEIGHT_IN_FACES = 10.5  # head top to soles, in Haar face-box sides
WIDTH_IN_FACES = 3.0  # shoulders with a little room
HEAD_TOP_IN_FACES = 0.5  # head top above the face box's top edge (hair)
REACH_IN_FACES = 4.5  # how far from the face centre a limb's blob may be to count


def person_box(face: Box, blobs: tuple[Blob, ...] | list[Blob], width: int, height: int) -> Box:
    """Box around the person whose face this is, clipped to the width x height frame."""
    top = face.y - HEAD_TOP_IN_FACES * face.h
    bottom = top + HEIGHT_IN_FACES * face.h
    left = face.cx - WIDTH_IN_FACES / 2 * face.w
    right = face.cx + WIDTH_IN_FACES / 2 * face.w
    reach = Box(face.cx - REACH_IN_FACES * face.w, top, 2 * REACH_IN_FACES * face.w, bottom - top)
    for blob in blobs:
        if reach.contains(Box.around(blob.box.cx, blob.box.cy, 0, 0)):
            left, right = min(left, blob.box.x), max(right, blob.box.right)
            bottom = max(bottom, blob.box.bottom + 0.5 * face.h)  # + the feet below bare legs
    return Box(left, top, right - left, bottom - top).clipped(width, height)
