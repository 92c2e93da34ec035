"""POST /animate: stream the upload into a new job folder, check it, queue the render.

On any failure, the client's or ours, the job's folder is removed: a refused request leaves nothing
behind, on disk or in the queue.
"""

import re
from pathlib import Path

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from service.context import ServiceContext
from service.errors import ApiError
from service.jobs import describe
from service.media import SNIFF_BYTES, probe_image, probe_video, sniff_image, sniff_video
from service.queue import live_workers
from service.schemas import MODEL_NAME_PATTERN, AnimateOptions, JobResource
from service.storage import DRIVING, SOURCE
from service.uploads import receive_form

OPTION_FIELDS = set(AnimateOptions.model_fields)
TEXT_FIELDS = OPTION_FIELDS | {"model"}


def _options(fields: dict[str, str]) -> AnimateOptions:
    try:
        return AnimateOptions(**{name: value for name, value in fields.items() if name in OPTION_FIELDS})
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ".".join(str(part) for part in error["loc"][:1])
        raise ApiError(422, "invalid_field", f"{name}: {error['msg']}") from None


def _check_model(ctx: ServiceContext, name: str) -> None:
    """Refuse a model no live worker has loaded; with no worker alive the job waits for one."""
    if not re.fullmatch(MODEL_NAME_PATTERN, name):
        raise ApiError(422, "invalid_field", "model: not a model name")
    loaded = {model["name"] for worker in live_workers(ctx.redis) for model in worker.get("models", [])}
    if loaded and name not in loaded:
        raise ApiError(
            422, "unknown_model", f"model {name!r} is not loaded; loaded: {', '.join(sorted(loaded))}"
        )


def _sniffed(path: Path, role: str, sniff) -> tuple[Path, str]:
    """Rename the upload to `<role>.<type>` by its magic bytes; 415 when the type is not accepted."""
    with path.open("rb") as file:
        kind = sniff(file.read(SNIFF_BYTES))
    if kind is None:
        accepted = "PNG, JPEG or WebP" if role == SOURCE else "MP4, MOV, WebM or MKV"
        raise ApiError(415, "unsupported_media_type", f"{role} must be {accepted}")
    return path.rename(path.with_name(f"{role}.{kind}")), kind


def _check_and_queue(
    ctx: ServiceContext, job_id: str, files: dict[str, Path], fields: dict[str, str]
) -> JobResource:
    settings = ctx.settings
    for role in (SOURCE, DRIVING):
        if role not in files:
            raise ApiError(422, "missing_field", f"field {role!r} (a file) is required")
    options = _options(fields)
    model = fields.get("model") or settings.default_model
    _check_model(ctx, model)
    source, source_kind = _sniffed(files[SOURCE], SOURCE, sniff_image)
    driving, driving_kind = _sniffed(files[DRIVING], DRIVING, sniff_video)
    image = probe_image(source, source_kind, settings.max_pixels)
    video = probe_video(driving, driving_kind, settings.max_driving_seconds)
    request = {"model": model, "options": options.model_dump()}  # the worker finds the files by the job id
    job = ctx.queue.enqueue(
        job_id, request, {"inputs": {"source": image.to_dict(), "driving": video.to_dict()}}
    )
    return describe(job)


async def submit(request: Request, ctx: ServiceContext) -> JobResource:
    settings = ctx.settings
    if await run_in_threadpool(ctx.queue.waiting) >= settings.max_queued:
        raise ApiError(429, "queue_full", "too many jobs are waiting; retry later", {"Retry-After": "30"})
    job_id, folder = ctx.store.create()
    try:
        form = await receive_form(request, folder, {SOURCE, DRIVING}, TEXT_FIELDS, settings.max_upload_bytes)
        return await run_in_threadpool(_check_and_queue, ctx, job_id, form.files, form.fields)
    except BaseException:
        ctx.store.remove(job_id)
        raise
