"""Streaming multipart/form-data straight into a job's folder, with the size limit enforced as it streams.

Starlette's own form parsing reads the whole body before the route runs, so a limit could only be
checked afterwards; here each chunk is counted as it arrives and the request is answered 413 as soon
as the total, or one file, passes its limit, without reading the rest. File parts go to disk chunk
by chunk, never whole into memory; text fields are small and capped. Each part is hashed on the way
(its name and content, not the multipart framing), so a repeated request can be recognised.
"""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.errors import ApiError

MAX_FIELD_BYTES = 1024
MAX_PART_HEAD_BYTES = 16 * 1024  # a part's headers together, as for the request's own head


@dataclass
class ReceivedForm:
    files: dict[str, Path] = field(default_factory=dict)  # field name -> the file written
    fields: dict[str, str] = field(default_factory=dict)
    part_digests: dict[str, str] = field(default_factory=dict)  # field name -> SHA-256 of its content

    @property
    def digest(self) -> str:
        """One SHA-256 of every part's name and content, whatever their order or framing."""
        lines = "".join(f"{name}\0{value}\n" for name, value in sorted(self.part_digests.items()))
        return hashlib.sha256(lines.encode()).hexdigest()


def too_large(limit: int, name: str | None = None) -> ApiError:
    what = f"field {name!r}" if name else "the request body"
    return ApiError(413, "payload_too_large", f"{what} exceeds {limit / 1024 / 1024:g} MB", field=name)


class _FormWriter:
    """python-multipart callbacks writing file parts to `folder` and collecting text fields."""

    def __init__(self, folder: Path, file_limits: dict[str, int], text_fields: set[str]):
        self.folder = folder
        self.file_limits = file_limits
        self.text_fields = text_fields
        self.form = ReceivedForm()
        self.header_name = b""
        self.header_value = b""
        self.head_bytes = 0
        self.disposition = b""
        self.name = ""
        self.file: BinaryIO | None = None
        self.file_bytes = 0
        self.hash = hashlib.sha256()
        self.text = bytearray()
        self.finished = False

    def on_part_begin(self) -> None:
        self.head_bytes = 0
        self.disposition = b""
        self.name = ""
        self.text = bytearray()
        self.file_bytes = 0
        self.hash = hashlib.sha256()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_head(end - start)
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_head(end - start)
        self.header_value += data[start:end]

    def _count_head(self, size: int) -> None:
        self.head_bytes += size
        if self.head_bytes > MAX_PART_HEAD_BYTES:
            limit = MAX_PART_HEAD_BYTES // 1024
            raise ApiError(400, "bad_request", f"a multipart part's headers exceed {limit} KB")

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if not name:
            raise ApiError(400, "bad_request", "a multipart part has no field name")
        if name in self.form.files or name in self.form.fields:
            raise ApiError(422, "duplicate_field", f"field {name!r} is given more than once", field=name)
        is_file = b"filename" in options
        if name in self.file_limits:
            if not is_file:
                raise ApiError(422, "invalid_field", f"field {name!r} must be a file upload", field=name)
            path = self.folder / f"{name}.upload"
            self.file = path.open("xb")
            self.form.files[name] = path
        elif name in self.text_fields:
            if is_file:
                raise ApiError(
                    422, "invalid_field", f"field {name!r} must be a plain value, not a file", field=name
                )
        else:
            raise ApiError(422, "unknown_field", f"unknown field {name!r:.40}", field=name[:40])
        self.name = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        self.hash.update(chunk)
        if self.file is not None:
            self.file_bytes += len(chunk)
            if self.file_bytes > self.file_limits[self.name]:
                raise too_large(self.file_limits[self.name], self.name)
            self.file.write(chunk)
            return
        self.text += chunk
        if len(self.text) > MAX_FIELD_BYTES:
            raise ApiError(
                422,
                "invalid_field",
                f"field {self.name!r} is longer than {MAX_FIELD_BYTES} bytes",
                field=self.name,
            )

    def on_part_end(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        else:
            self.form.fields[self.name] = self.text.decode("utf-8", "replace")
        self.form.part_digests[self.name] = self.hash.hexdigest()

    def on_end(self) -> None:
        self.finished = True

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def callbacks(self) -> dict:
        names = ("part_begin", "header_field", "header_value", "header_end", "headers_finished")
        names += ("part_data", "part_end", "end")
        return {f"on_{name}": getattr(self, f"on_{name}") for name in names}


async def receive_form(
    request: Request, folder: Path, file_limits: dict[str, int], text_fields: set[str], limit: int
) -> ReceivedForm:
    """Parse the request body into `folder`, each file part under its own byte limit and the whole
    body under `limit`; ApiError (400, 413, 415, 422) for anything amiss."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "the request must be multipart/form-data")
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_request", "the multipart Content-Type has no boundary")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)

    writer = _FormWriter(folder, file_limits, text_fields)
    try:
        parser = MultipartParser(boundary, writer.callbacks())
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise too_large(limit)
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise ApiError(400, "bad_request", f"malformed multipart body ({exc})") from None
    except ClientDisconnect:
        raise ApiError(400, "bad_request", "the client disconnected during the upload") from None
    finally:
        writer.close()
    if not writer.finished:
        raise ApiError(400, "bad_request", "the multipart body ended before its closing boundary")
    return writer.form
