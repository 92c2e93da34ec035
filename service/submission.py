"""POST /animate: stream the upload into a staging folder, check it, commit it to the store, queue it.

On any failure, the client's or ours, the job's files are removed: a refused request leaves nothing
behind, on disk, in the store or in the queue. With API keys on, the job belongs to the calling key's
owner, who alone sees it afterwards, and the owner's submissions are rate limited. An
`Idempotency-Key` makes a repeated request return the job of the first (service/idempotency.py).
"""

import contextlib
import logging
import re
from pathlib import Path

import redis
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from contract.capabilities import UnsupportedChoice, check_options
from contract.job import (
    MODEL_NAME_PATTERN,
    DrivingSummary,
    InputSummary,
    JobRequest,
    SourceSummary,
    queued_meta,
)
from contract.logs import current_job_id
from contract.metrics import record_submitted
from contract.options import AnimationOptions, first_error
from contract.queue import loaded_models
from contract.storage import DRIVING, SOURCE, StorageError, new_job_id
from service import idempotency
from service.context import ServiceContext
from service.errors import ApiError
from service.job_view import describe
from service.media import SNIFF_BYTES, probe_image, probe_video, sniff_image, sniff_video
from service.ratelimit import check_rate
from service.schemas import JobResource
from service.uploads import ReceivedForm, receive_form
from service.webhooks import check_url

OPTION_FIELDS = set(AnimationOptions.model_fields)
WEBHOOK_FIELD = "webhook_url"
TEXT_FIELDS = OPTION_FIELDS | {"model", WEBHOOK_FIELD}
log = logging.getLogger("service.submission")


def _options(fields: dict[str, str]) -> AnimationOptions:
    try:
        return AnimationOptions(**{name: value for name, value in fields.items() if name in OPTION_FIELDS})
    except ValidationError as exc:
        name, message = first_error(exc)
        raise ApiError(422, "invalid_field", message, field=name) from None


def _check_model(ctx: ServiceContext, name: str, options: AnimationOptions) -> None:
    """Refuse a model no live worker has loaded, or options it cannot render (as its worker says);
    with no worker alive the job waits for one (and the worker checks the options)."""
    if not re.fullmatch(MODEL_NAME_PATTERN, name):
        raise ApiError(422, "invalid_field", "model: not a model name", field="model")
    loaded = loaded_models(ctx.redis)
    if loaded and name not in loaded:
        raise ApiError(
            422,
            "unknown_model",
            f"model {name!r} is not loaded; loaded: {', '.join(sorted(loaded))}",
            field="model",
        )
    if name in loaded:
        try:
            check_options(name, loaded[name], options)
        except UnsupportedChoice as exc:
            raise ApiError(422, exc.code, str(exc), field=exc.field) from None


def _webhook(ctx: ServiceContext, fields: dict[str, str]) -> str | None:
    url = fields.get(WEBHOOK_FIELD)
    if not url:
        return None
    if ctx.settings.webhook_key is None:
        raise ApiError(
            422, "webhooks_disabled", "webhook_url: this service has no WEBHOOK_SECRET", field=WEBHOOK_FIELD
        )
    return check_url(url, ctx.settings.webhook_allow_private)


def _sniffed(path: Path, role: str, sniff) -> tuple[Path, str]:
    """Rename the upload to `<role>.<type>` by its magic bytes; 415 when the type is not accepted."""
    with path.open("rb") as file:
        kind = sniff(file.read(SNIFF_BYTES))
    if kind is None:
        accepted = "PNG, JPEG or WebP" if role == SOURCE else "MP4, MOV, WebM or MKV"
        raise ApiError(415, "unsupported_media_type", f"{role} must be {accepted}", field=role)
    return path.rename(path.with_name(f"{role}.{kind}")), kind


def _check_and_queue(ctx: ServiceContext, job_id: str, form: ReceivedForm, owner: str | None) -> JobResource:
    settings = ctx.settings
    files, fields = form.files, form.fields
    for role in (SOURCE, DRIVING):
        if role not in files:
            raise ApiError(422, "missing_field", f"field {role!r} (a file) is required", field=role)
    options = _options(fields)
    model = fields.get("model") or settings.default_model
    _check_model(ctx, model, options)
    webhook = _webhook(ctx, fields)
    source, source_kind = _sniffed(files[SOURCE], SOURCE, sniff_image)
    driving, driving_kind = _sniffed(files[DRIVING], DRIVING, sniff_video)
    image = probe_image(source, source_kind, settings.max_pixels, ctx.prober)
    video = probe_video(driving, driving_kind, settings, ctx.prober)
    inputs = InputSummary(source=SourceSummary(**image.to_dict()), driving=DrivingSummary(**video.to_dict()))
    ctx.store.commit_inputs(job_id, {SOURCE: source, DRIVING: driving})
    record = ctx.queue.enqueue(
        job_id, JobRequest(model=model, options=options), queued_meta(inputs, owner, webhook)
    )
    with contextlib.suppress(redis.exceptions.RedisError):  # queued: accepted, whatever the metrics do
        record_submitted(ctx.redis)
    return describe(record)


def _replay(ctx: ServiceContext, job_id: str, owner: str | None) -> JobResource:
    record = ctx.queue.fetch(job_id)
    if record is None or record.owner != owner:
        raise ApiError(
            409,
            "idempotency_key_in_use",
            f"the first request with this {idempotency.HEADER} is still being handled or was deleted",
        )
    return describe(record)


async def submit(request: Request, ctx: ServiceContext, owner: str | None) -> tuple[JobResource, bool]:
    """The job queued for this request, and whether it is an earlier one (an idempotent replay)."""
    settings = ctx.settings
    key = idempotency.parse_key(request.headers.get(idempotency.HEADER))
    if owner is not None and settings.rate_limit:
        await run_in_threadpool(check_rate, ctx.redis, owner, settings.rate_limit)
    if await run_in_threadpool(ctx.queue.waiting) >= settings.max_queued:
        raise ApiError(429, "queue_full", "too many jobs are waiting; retry later", {"Retry-After": "30"})
    job_id = new_job_id()
    with ctx.open_uploads.open(job_id):  # until accepted or its files removed, even when cancelled
        folder = ctx.store.staging(job_id)
        current_job_id.set(job_id)
        claimed = False
        try:
            limits = settings.max_file_bytes
            form = await receive_form(request, folder, limits, TEXT_FIELDS, settings.max_upload_bytes)
            if key is not None:
                earlier = await run_in_threadpool(
                    idempotency.claim, ctx.redis, owner, key, form.digest, job_id, settings.result_ttl
                )
                if earlier is not None:
                    await _discard(ctx, job_id)
                    return await run_in_threadpool(_replay, ctx, earlier, owner), True
                claimed = True
            async with ctx.upload_checks.slot(owner, settings.probe_timeout_seconds):
                return await run_in_threadpool(_check_and_queue, ctx, job_id, form, owner), False
        except BaseException:
            if claimed:  # first: nothing that fails below may keep a retry from being judged afresh
                with contextlib.suppress(redis.exceptions.RedisError):
                    await run_in_threadpool(idempotency.release, ctx.redis, owner, key, job_id)
            await _discard(ctx, job_id)
            raise


async def _discard(ctx: ServiceContext, job_id: str) -> None:
    """Remove the files of a request that was not accepted. The answer stays the request's own (a 400
    is not turned into a 503): what a store outage keeps there, the sweep removes as an orphan."""
    try:
        await run_in_threadpool(ctx.store.remove, job_id)
    except StorageError as exc:
        log.warning("the files of a refused request stay for the sweep: %s", exc, extra={"job_id": job_id})
