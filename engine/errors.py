"""Errors the engine reports about its inputs; `code` is what the API and the CLI show."""


class RenderError(Exception):
    """A render could not be done because of its inputs or its environment, not a bug."""

    code = "render_error"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidImage(RenderError):
    code = "invalid_image"


class InvalidVideo(RenderError):
    code = "invalid_video"


class VideoDecodeError(RenderError):
    code = "video_decode_error"


class StorageError(RenderError):
    code = "storage_error"


class RenderCanceled(RenderError):
    code = "canceled"
