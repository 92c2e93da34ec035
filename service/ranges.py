"""Byte ranges of a download (RFC 9110 section 14): one range per request, answered 206 or 416.

A client resuming a download or a video element seeking asks for one range; several ranges in one
request (multipart/byteranges) are rare and answered with the whole object, as the RFC allows.
"""

import re

from service.errors import ApiError

SINGLE_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte to send, inclusive; None for the whole object; 416 ApiError when unsatisfiable."""
    if not header:
        return None
    match = SINGLE_RANGE.fullmatch(header.strip().replace(" ", ""))
    if match is None:
        if header.strip().startswith("bytes=") and "," in header:
            return None
        raise ApiError(400, "invalid_range", f"Range must be bytes=FIRST-LAST, not {header[:60]!r}")
    first, last = match.groups()
    if not first and not last:
        raise ApiError(400, "invalid_range", "Range names no byte")
    if not first:  # the last N bytes
        count = int(last)
        if count == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(size - count, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        raise ApiError(400, "invalid_range", f"Range {header[:60]!r} ends before it starts")
    if start >= size:
        raise _unsatisfiable(size)
    return start, end


def _unsatisfiable(size: int) -> ApiError:
    return ApiError(
        416,
        "range_not_satisfiable",
        f"the object has {size} bytes",
        {"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"},
    )
