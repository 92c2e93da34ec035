"""The HTTP routes; each one only translates between HTTP and the modules that do the work."""

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from contract.job import TERMINAL, ErrorDetail, JobRecord
from contract.logs import current_job_id
from contract.outcomes import job_ended
from contract.queue import live_workers
from contract.storage import POSTER, InvalidJobId, StorageError, parse_job_id, result_name
from service.auth import caller
from service.context import ServiceContext, get_context
from service.errors import ApiError
from service.job_view import describe
from service.metrics import exposition
from service.openapi import animate_form, binary_response
from service.ranges import parse_range
from service.schemas import ErrorBody, Health, JobResource, ModelInfo, ModelList, Readiness
from service.submission import submit
from service.uploads import MAX_FIELD_BYTES

router = APIRouter(generate_unique_id_function=lambda route: route.name)  # operation ids: the function names
Context = Depends(get_context)
Caller = Depends(caller)


def _errors(*statuses: int) -> dict:
    return {status: {"model": ErrorBody} for status in statuses}


ANIMATE_FORM = {
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": "the same key and content again: the first request's job; other content: 409",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
        }
    ],
    "requestBody": animate_form(MAX_FIELD_BYTES),
}


def _job(ctx: ServiceContext, job_id: str, owner: str | None) -> JobRecord:
    """The job, if it exists and belongs to `owner`: another key's job is answered as unknown."""
    try:
        job_id = parse_job_id(job_id)
    except InvalidJobId:
        raise ApiError(404, "job_not_found", "no such job: job ids are UUID4s") from None
    current_job_id.set(job_id)
    record = ctx.queue.fetch(job_id)
    if record is None or record.owner != owner:
        raise ApiError(404, "job_not_found", f"no job {job_id} (unknown, or expired after RESULT_TTL)")
    return record


@router.post(
    "/animate",
    status_code=202,
    response_model=JobResource,
    summary="Queue an animation of a source image by a driving video",
    openapi_extra=ANIMATE_FORM,
    responses={
        202: {
            "headers": {
                "Location": {"description": "/jobs/{id}", "schema": {"type": "string"}},
                "Idempotent-Replayed": {
                    "description": "true: the job of an earlier request with this Idempotency-Key",
                    "schema": {"type": "string"},
                },
            }
        },
        **_errors(400, 401, 408, 409, 413, 415, 422, 429, 503, 507),
    },
)
async def animate(
    request: Request, response: Response, ctx: ServiceContext = Context, owner: str | None = Caller
) -> JobResource:
    job, replayed = await submit(request, ctx, owner)
    response.headers["Location"] = f"/jobs/{job.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return job


@router.get(
    "/jobs/{job_id}", response_model=JobResource, responses=_errors(401, 404, 503), summary="A job's state"
)
def get_job(job_id: str, ctx: ServiceContext = Context, owner: str | None = Caller) -> JobResource:
    return describe(_job(ctx, job_id, owner))


RESULT_TYPES = ("video/mp4", "video/webm", "image/gif", "image/webp")


@router.get(
    "/jobs/{job_id}/result",
    response_class=StreamingResponse,
    responses={
        200: binary_response(RESULT_TYPES, "the result in the format asked for; Range requests answer 206"),
        206: binary_response(RESULT_TYPES, "the requested bytes of the result"),
        307: {"description": "with an object store: a short-lived presigned URL of the result"},
        **_errors(400, 401, 404, 409, 416, 503),
    },
    summary="Download the finished video (MP4, WebM, GIF or WebP)",
)
def get_result(
    job_id: str, request: Request, ctx: ServiceContext = Context, owner: str | None = Caller
) -> Response:
    record = _finished(ctx, job_id, owner)
    result = record.result
    name, media_type = result_name(result.format), result.mime_type
    return _download(ctx, request, record, name, media_type, f"{record.id}.{result.format}")


@router.get(
    "/jobs/{job_id}/poster",
    response_class=StreamingResponse,
    responses={
        200: binary_response(("image/jpeg",), "the poster: a JPEG of the chosen frame"),
        307: {"description": "with an object store: a short-lived presigned URL of the poster"},
        **_errors(400, 401, 404, 409, 416, 503),
    },
    summary="Download the poster image of a job submitted with poster=true",
)
def get_poster(
    job_id: str, request: Request, ctx: ServiceContext = Context, owner: str | None = Caller
) -> Response:
    record = _finished(ctx, job_id, owner)
    if record.result.poster is None:
        raise ApiError(404, "no_poster", f"job {record.id} was not asked for a poster (poster=true)")
    return _download(ctx, request, record, POSTER, "image/jpeg", f"{record.id}.jpg")


def _finished(ctx: ServiceContext, job_id: str, owner: str | None) -> JobRecord:
    """The job, succeeded with a result; 409 while it is not (yet)."""
    record = _job(ctx, job_id, owner)
    status = record.status()
    if status in ("queued", "started"):
        raise ApiError(409, "result_not_ready", f"job {record.id} is {status}; poll /jobs/{record.id}")
    if status != "succeeded" or record.result is None:
        raise ApiError(409, "result_unavailable", f"job {record.id} {status}: there is no result")
    return record


def _download(
    ctx: ServiceContext, request: Request, record: JobRecord, name: str, media_type: str, filename: str
) -> Response:
    """A stored file of the job: a redirect to a presigned URL, or its bytes (Range answered 206)."""
    stored = ctx.store.stat(record.id, name)
    if stored is None:
        raise ApiError(404, "result_expired", f"the files of job {record.id} are no longer stored")
    if ctx.settings.result_delivery == "redirect":
        url = ctx.store.presigned_url(record.id, name, ctx.settings.presign_seconds)
        if url is not None:
            return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    wanted = parse_range(request.headers.get("range"), stored.size)
    first, last = wanted or (0, stored.size - 1)
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Length": str(last - first + 1),
        "Content-Disposition": f'inline; filename="{filename}"',
    }
    if wanted is not None:
        headers["Content-Range"] = f"bytes {first}-{last}/{stored.size}"
    chunks = ctx.store.read(record.id, name, first, last) if stored.size else iter(())
    return StreamingResponse(
        iterate_in_threadpool(chunks),
        status_code=206 if wanted is not None else 200,
        media_type=_download_type(request, media_type),
        headers=headers,
    )


def _download_type(request: Request, media_type: str) -> str:
    """The file's own type, or application/octet-stream for a client that asks only for that."""
    accept = request.headers.get("accept", "")
    wants_bytes = "application/octet-stream" in accept
    return (
        "application/octet-stream" if wants_bytes and media_type.split("/")[0] not in accept else media_type
    )


@router.delete(
    "/jobs/{job_id}",
    status_code=202,
    response_model=JobResource,
    responses={204: {"description": "a finished job and its files were deleted"}, **_errors(401, 404, 503)},
    summary="Cancel a job, or delete a finished one",
)
def delete_job(job_id: str, ctx: ServiceContext = Context, owner: str | None = Caller):
    record = _job(ctx, job_id, owner)
    if record.status() in TERMINAL:
        # The files first: a store outage answers 503 and leaves the job listed, to be deleted again.
        ctx.store.remove(record.id)
        ctx.queue.forget(record)
        return Response(status_code=204)
    if ctx.queue.request_cancel(record):
        job_ended(ctx.redis, record, "canceled", ErrorDetail(code="canceled", message="the job was canceled"))
    return describe(_job(ctx, record.id, owner))


@router.get(
    "/models",
    response_model=ModelList,
    responses=_errors(401, 503),
    summary="The models the workers have loaded",
)
def get_models(ctx: ServiceContext = Context, owner: str | None = Caller) -> ModelList:
    found: dict[str, ModelInfo] = {}
    for worker in live_workers(ctx.redis):
        for model in worker.get("models", []):
            if model["name"] in found:
                found[model["name"]].workers += 1
            else:
                found[model["name"]] = ModelInfo.model_validate(
                    {**model, "device": worker.get("device", "cpu"), "workers": 1}
                )
    return ModelList(default=ctx.settings.default_model, models=sorted(found.values(), key=lambda m: m.name))


@router.get("/healthz", response_model=Health, summary="The process answers")
def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    responses=_errors(503),
    summary="Redis reachable, the job store writable, a worker alive; else 503 saying what is wrong",
)
def readyz(ctx: ServiceContext = Context):
    ctx.redis.ping()
    try:
        ctx.store_check.check()
    except StorageError as exc:
        return JSONResponse({"error": {"code": exc.code, "message": str(exc)}}, status_code=503)
    workers = len(live_workers(ctx.redis))
    if workers == 0:
        return JSONResponse(
            {"error": {"code": "no_worker", "message": "no worker is alive to render jobs"}}, status_code=503
        )
    return Readiness(workers=workers, queued=ctx.queue.waiting())


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}, **_errors(503)},
    summary="Prometheus metrics of the jobs, the queue and the workers",
)
def metrics(ctx: ServiceContext = Context) -> Response:
    return Response(exposition(ctx.queue), media_type="text/plain; version=0.0.4; charset=utf-8")
