"""The FastAPI application factory: `uvicorn service.app:create_app --factory`.

This package is HTTP only and never imports torch: renders happen in worker processes, reached
through the Redis queue, and the models they loaded are read from what they publish there.
"""

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from contract.logs import configure_logging
from contract.settings import Settings
from service import background
from service.body_guard import BodyGuard
from service.cleanup import sweep
from service.context import ServiceContext
from service.errors import install_error_handlers
from service.live_socket import router as live_router
from service.openapi import install_openapi
from service.readiness import prepare_store
from service.routes import router
from service.web import install_web

log = logging.getLogger("service")

DESCRIPTION = """
Animate a still image by the motion of a driving video (First Order Motion Model).

1. `POST /animate` with a `source` image and a `driving` video (multipart); the answer is 202 with
   the job and `Location: /jobs/{id}`.
2. Poll `GET /jobs/{id}` for `status` and `progress` until `succeeded` (or `failed`, `canceled`).
3. Download `GET /jobs/{id}/result` (an MP4; Range requests supported).

Errors are always `{"error": {"code": "...", "message": "..."}}` (plus `"field"` when one field is at
fault). Where the service has API keys, send yours as `Authorization: Bearer KEY` or `X-API-Key: KEY`.
"""


async def _sweep_forever(ctx: ServiceContext) -> None:
    sweep_once = functools.partial(sweep, ctx.store, ctx.queue, ctx.settings.result_ttl)
    await background.keep_going("expired-job sweep", ctx.settings.cleanup_interval, sweep_once)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging("api", settings.log_level, settings.log_format)
    ctx = ServiceContext.from_settings(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(ctx.prober.warm_up)
        await run_in_threadpool(prepare_store, ctx.store, settings.s3_create_bucket)
        task = asyncio.create_task(_sweep_forever(ctx))
        duties = background.start(ctx)
        yield
        await ctx.open_uploads.drained()
        await background.stop(duties)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        ctx.redis.close()

    app = FastAPI(title="animate", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.context = ctx
    app.add_middleware(
        BodyGuard, deadline=settings.upload_deadline_seconds, idle=settings.upload_idle_seconds
    )
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(live_router)
    install_web(app)
    install_openapi(app)
    return app
