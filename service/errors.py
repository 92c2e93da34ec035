"""Every error the API answers is JSON `{"error": {"code", "message"}}` with a fitting status.

Handlers here turn FastAPI's and Starlette's own errors (validation, unknown route, wrong method)
and an outage of Redis or the store into that shape: a disk with no room left is 507
`insufficient_storage`, and a Redis that refuses writes (its append-only file cannot be written, it
is out of memory or a read-only replica) is 503 `queue_unavailable`, like a Redis that is down.
Anything else is a bug and answers 500 without details.
"""

import errno
import logging
import re

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from contract.storage import StorageError
from service.body_guard import UploadTimeout

log = logging.getLogger("service")

DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
REDIS_REFUSING_WRITES = re.compile(r"\b(MISCONF|OOM|READONLY|LOADING)\b")  # also inside a pipeline's error
STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "upload_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "unavailable",
    507: "insufficient_storage",
}


class ApiError(Exception):
    """An answer to a client's mistake, or a temporary condition, with its HTTP status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        field: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.field = field  # the request field at fault, when there is one


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, field: str | None = None
) -> JSONResponse:
    detail = {"code": code, "message": message}
    if field is not None:
        detail["field"] = field
    return JSONResponse({"error": detail}, status_code=status, headers=headers)


def queue_unavailable() -> ApiError:
    return ApiError(
        503, "queue_unavailable", "the job queue (Redis) is unreachable; retry shortly", {"Retry-After": "5"}
    )


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers, exc.field)

    @app.exception_handler(UploadTimeout)
    async def _upload_timeout(request: Request, exc: UploadTimeout) -> JSONResponse:
        return error_response(408, "upload_timeout", f"{exc}: send the whole request sooner")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = STATUS_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route for {request.method} {request.url.path}"
        return error_response(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("Redis unreachable while serving %s %s: %s", request.method, request.url.path, exc)
        error = queue_unavailable()
        return error_response(error.status, error.code, error.message, error.headers)

    @app.exception_handler(redis.exceptions.ResponseError)
    async def _redis_refused(request: Request, exc: redis.exceptions.ResponseError) -> JSONResponse:
        if not REDIS_REFUSING_WRITES.search(str(exc)):
            return await _bug(request, exc)
        log.warning("Redis refused a write while serving %s %s: %s", request.method, request.url.path, exc)
        error = queue_unavailable()
        return error_response(error.status, error.code, error.message, error.headers)

    @app.exception_handler(OSError)
    async def _disk_full(request: Request, exc: OSError) -> JSONResponse:
        if exc.errno not in DISK_FULL:
            return await _bug(request, exc)
        log.warning("no room on disk while serving %s %s: %s", request.method, request.url.path, exc)
        return error_response(
            507,
            "insufficient_storage",
            "the service has no room for this now; retry later",
            {"Retry-After": "60"},
        )

    @app.exception_handler(StorageError)
    async def _store_down(request: Request, exc: StorageError) -> JSONResponse:
        log.warning("store failed while serving %s %s: %s", request.method, request.url.path, exc)
        if not exc.transient:  # no bucket, refused credentials: retrying cannot help
            message = f"the job store is not usable until its operator fixes it ({exc.code}); see GET /readyz"
            return error_response(503, exc.code, message)
        return error_response(
            503, "storage_unavailable", "the job store is unavailable; retry shortly", {"Retry-After": "5"}
        )

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error serving %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "the server failed to answer this request")
