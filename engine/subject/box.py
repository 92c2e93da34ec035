"""Axis-aligned boxes in pixel coordinates, and fitting a square crop into a frame."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Box:
    """x, y: top-left corner; w, h: size; all in pixels of the image the box belongs to."""

    x: float
    y: float
    w: float
    h: float

    @classmethod
    def around(cls, cx: float, cy: float, w: float, h: float | None = None) -> "Box":
        h = w if h is None else h
        return cls(cx - w / 2, cy - h / 2, w, h)

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2

    @property
    def right(self) -> float:
        return self.x + self.w

    @property
    def bottom(self) -> float:
        return self.y + self.h

    @property
    def area(self) -> float:
        return max(self.w, 0.0) * max(self.h, 0.0)

    def scaled(self, factor: float, factor_y: float | None = None) -> "Box":
        """The same region in an image resized by `factor` (horizontally, when factor_y is given)."""
        fy = factor if factor_y is None else factor_y
        return Box(self.x * factor, self.y * fy, self.w * factor, self.h * fy)

    def grown(self, factor: float) -> "Box":
        """The box resized by `factor` about its centre."""
        return Box.around(self.cx, self.cy, self.w * factor, self.h * factor)

    def intersection(self, other: "Box") -> float:
        w = min(self.right, other.right) - max(self.x, other.x)
        h = min(self.bottom, other.bottom) - max(self.y, other.y)
        return max(w, 0.0) * max(h, 0.0)

    def iou(self, other: "Box") -> float:
        inter = self.intersection(other)
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def contains(self, other: "Box", tolerance: float = 0.0) -> bool:
        return (
            other.x >= self.x - tolerance
            and other.y >= self.y - tolerance
            and other.right <= self.right + tolerance
            and other.bottom <= self.bottom + tolerance
        )

    def clipped(self, width: int, height: int) -> "Box":
        """The part of the box inside a width x height image (possibly empty)."""
        x0, y0 = max(self.x, 0.0), max(self.y, 0.0)
        x1, y1 = min(self.right, float(width)), min(self.bottom, float(height))
        return Box(x0, y0, max(x1 - x0, 0.0), max(y1 - y0, 0.0))

    def rounded(self) -> tuple[int, int, int, int]:
        """Integer (x, y, w, h) with the size rounded once, so a square box stays square."""
        return round(self.x), round(self.y), round(self.w), round(self.h)


def parse_box(text: str) -> Box:
    """`"x,y,w,h"` in integer pixels with a positive size; ValueError says what is wrong."""
    parts = text.split(",")
    if len(parts) != 4:
        raise ValueError(f"a box is x,y,w,h in pixels, not {text!r}")
    try:
        x, y, w, h = (int(p.strip()) for p in parts)
    except ValueError:
        raise ValueError(f"a box is four integers x,y,w,h, not {text!r}") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"box width and height must be positive, not {w}x{h}")
    return Box(x, y, w, h)


def fit_square(cx: float, cy: float, side: float, width: int, height: int, pad: bool = False) -> Box:
    """A square of `side` centred as near (cx, cy) as the width x height frame allows.

    Without `pad` the square is shrunk to the frame's short side and slid inside the frame, so the
    crop never shows invented pixels. With `pad` it may be as large as the long side; along an axis
    where it is larger than the frame it covers the whole frame and the rest is padding.
    """
    side = min(side, max(width, height) if pad else min(width, height))
    side = max(side, 1.0)
    return Box(_place(cx, side, width), _place(cy, side, height), side, side)


def _place(centre: float, side: float, extent: int) -> float:
    """Start of an interval of length `side`, centred on `centre`, kept inside [0, extent] or over it."""
    start = centre - side / 2
    low, high = sorted((0.0, extent - side))
    return min(max(start, low), high)
