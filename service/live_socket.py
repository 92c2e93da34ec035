"""`WebSocket /live?model=NAME`: animate a photo by a client's camera frames, relayed to a live worker.

The API only relays and checks: it picks a live worker with room (the worker has the last word, see
contract/live_channel.py), answers the handshake 503 or 422 with the usual JSON error when none
takes the session, checks the source image like an upload (in a limited child, in one of the
check slots uploads use, killed as soon as the session ends) and every driving frame's type and
decoding cost (its JPEG markers walked: size and scans, nothing decoded, contract/images.py), and
keeps at most FRAME_QUEUE frames waiting: older ones are dropped and counted. A session's frames
go to the worker at most INTAKE_FACTOR times as fast as the rate it was admitted at (LIVE_TARGET_FPS,
which the worker holds it to): every message is read as it comes, and a frame that comes sooner
waits for its turn, replaced by any newer one, so a client sending faster costs neither Redis nor
the worker more, and the newest frame is always the one rendered. A message may be up to
MAX_MESSAGE_BYTES (uvicorn's limit, set by service/__main__.py), twice the largest source, so a
source over the limit is read and refused with its documented close, not cut off by the protocol.
A stats message goes to the client every second. Whichever side closes, everything of the session
is released: the client's close or disconnect ends the relay, which deletes its keys and tells the
worker; a worker that ends the session or dies (its lease lapses) closes the WebSocket with the
reason.

Messages, client -> server: the source image (binary, first), then driving JPEGs (binary) and
`{"type": "reset"}` (text). Server -> client: `{"type": "ready", "model", "width", "height"}`,
animated JPEGs (binary, in order; a COM segment reads `frame=<index>`), `{"type": "stats", ...}` and
`{"type": "error", "error": {"code", "message"}}`, the last one before a close for fatal errors.
"""

import asyncio
import contextlib
import functools
import json
import logging
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import redis
import redis.asyncio as aioredis
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from contract import live_channel as channel
from service.auth import caller, owner_of
from service.context import ServiceContext
from service.errors import ApiError, error_response
from service.media import probe_image, sniff_image

MAX_SOURCE_BYTES = 16 * 1024 * 1024
MAX_MESSAGE_BYTES = 2 * MAX_SOURCE_BYTES  # what uvicorn reads of one message before cutting it off
MAX_TEXT_CHARS = 1024
STATS_INTERVAL = 1.0
INTAKE_FACTOR = 2  # frames sent on per admitted frame, at most: the newest is fresh when the worker takes it
# WebSocket close codes (RFC 6455) by the error codes that end a session
CLOSE_CODES = {
    "frame_too_large": 1009,
    "source_too_large": 1009,
    "live_worker_stopping": 1012,
    "live_worker_lost": 1011,
    "internal_error": 1011,
    "queue_unavailable": 1011,
    "source_timeout": 1008,
    "idle_timeout": 1008,
    "server_busy": 1013,  # try again later
}
UNSUPPORTED_DATA = 1003

router = APIRouter()
log = logging.getLogger("service")


class SessionError(Exception):
    """A fatal error of a live session: sent to the client, then the WebSocket is closed."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class WorkerEnded(SessionError):
    """The worker ended the session (an error, a shutdown, or it died): it has released its side."""


def _percentile_ms(ordered: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of sorted seconds, in milliseconds; None for no values."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000, 1)


@dataclass
class LiveStats:
    """Counts for the stats message; latency is the API's: a frame's arrival to its answer's send."""

    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    received_at: dict[int, float] = field(default_factory=dict)  # index -> arrival, for unanswered frames
    window_in: int = 0
    window_out: int = 0
    window_latency: list[float] = field(default_factory=list)
    window_start: float = field(default_factory=time.monotonic)

    def frame_in(self, index: int) -> None:
        self.frames_in += 1
        self.window_in += 1
        self.received_at[index] = time.monotonic()

    def frame_out(self, index: int) -> None:
        """An answer for frame `index`: every older frame still unanswered was dropped, whether this
        side trimmed it from the queue or the worker skipped it as stale (answers come in order)."""
        self.frames_out += 1
        self.window_out += 1
        arrived = self.received_at.pop(index, None)
        if arrived is not None:
            self.window_latency.append(time.monotonic() - arrived)
        older = [i for i in self.received_at if i < index]
        for i in older:
            del self.received_at[i]
        self.dropped += len(older)

    def message(self) -> dict:
        """The stats of the window since the last message; the window starts again."""
        now = time.monotonic()
        seconds = max(now - self.window_start, 1e-6)
        latency = sorted(self.window_latency)
        stats = {
            "type": "stats",
            "fps_in": round(self.window_in / seconds, 2),
            "fps_out": round(self.window_out / seconds, 2),
            "dropped": self.dropped,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "latency_ms": {"p50": _percentile_ms(latency, 0.5), "p95": _percentile_ms(latency, 0.95)},
        }
        self.window_in = self.window_out = 0
        self.window_latency = []
        self.window_start = now
        return stats


async def admit(client: aioredis.Redis, model: str) -> channel.SessionKeys:
    """Reserve a session on a live worker serving `model`; ApiError (422, 503) when none takes it.

    Each try has its own session id and client lease, so a worker that answers after its turn
    starts a session nobody feeds, which ends as soon as it sees that lease gone.
    """
    names = [name async for name in client.scan_iter(match=channel.WORKER_PREFIX + "*", count=100)]
    workers = channel.parse_presence(await client.mget(names)) if names else []
    if not workers:
        raise ApiError(503, "no_live_worker", "no live worker is running (python -m worker.live)")
    serving = channel.candidates(workers, model)
    if not serving:
        models = sorted({m["name"] for w in workers for m in w.get("models", [])})
        message = f"model {model!r} is not served live; live models: {', '.join(models) or 'none'}"
        raise ApiError(422, "unknown_model", message)
    reasons = []  # a worker that cannot serve one more session at its target frame rate says why
    for worker in serving:
        keys = channel.SessionKeys(str(uuid.uuid4()))
        await client.set(keys.client_lease, "1", ex=channel.LEASE_TTL)
        deadline = time.time() + channel.ADMISSION_TIMEOUT
        request = channel.session_request(keys.session, model, deadline)
        await client.rpush(channel.OPEN_PREFIX + worker["name"], request)
        answer = await client.blpop([keys.down], timeout=channel.ADMISSION_TIMEOUT)
        if answer is not None:
            kind, _, payload = channel.unpack(answer[1])
            if kind == channel.ACCEPTED:
                return keys
            if kind == channel.ERROR and (error := json.loads(payload)).get("code") == "live_too_slow":
                reasons.append(str(error.get("message")))
        await client.delete(keys.client_lease, keys.down)  # silent, full, or its models changed: next
    capacity = sum(w["capacity"] for w in serving)
    message = f"all {capacity} live sessions for model {model!r} are in use; retry later"
    if reasons:
        message = f"{'; '.join(reasons)}; retry later"
    raise ApiError(503, "live_busy", message, {"Retry-After": "5"})


def check_frame(data: bytes) -> None:
    """A driving frame must be a JPEG of bounded decoding cost: its markers are walked (size, scans),
    nothing is decoded."""
    if len(data) > channel.MAX_FRAME_BYTES:
        raise SessionError("frame_too_large", f"a driving frame is over {channel.MAX_FRAME_BYTES // 1024} KB")
    if sniff_image(data[:16]) != "jpeg":
        raise SessionError("unsupported_media_type", "driving frames must be JPEG images")
    if refusal := channel.frame_refusal(data):
        raise SessionError(*refusal)


async def check_source(data: bytes, ctx: ServiceContext, owner: str | None) -> None:
    """The same checks as an uploaded source image (service/media.py), in a limited child and one of
    the same slots; a session that ends meanwhile (this task canceled) has the child killed."""
    settings = ctx.settings
    limit = min(settings.max_upload_bytes, MAX_SOURCE_BYTES)
    if len(data) > limit:
        raise SessionError("source_too_large", f"the source image is over {limit / 1024 / 1024:g} MB")
    kind = sniff_image(data[:64])
    if kind is None:
        raise SessionError("unsupported_media_type", "the source must be a PNG, JPEG or WebP image")
    cancel = threading.Event()
    with tempfile.TemporaryDirectory(prefix="live-source-") as folder:
        path = Path(folder) / f"source.{kind}"
        path.write_bytes(data)
        try:
            async with ctx.upload_checks.slot(owner, settings.probe_timeout_seconds):
                check = functools.partial(probe_image, path, kind, settings.max_pixels, ctx.prober, cancel)
                await asyncio.get_running_loop().run_in_executor(None, check)
        except ApiError as exc:
            raise SessionError(exc.code, exc.message) from None
        finally:
            cancel.set()


class Relay:
    """One accepted session: client -> Redis, Redis -> client and the stats, as three tasks."""

    def __init__(
        self,
        websocket: WebSocket,
        client: aioredis.Redis,
        keys: channel.SessionKeys,
        ctx: ServiceContext,
        owner: str | None,
    ):
        self.websocket = websocket
        self.client = client
        self.keys = keys
        self.ctx = ctx
        self.owner = owner
        self.frame_gap = 1 / (INTAKE_FACTOR * ctx.settings.live_target_fps)  # seconds between frames sent
        self.stats = LiveStats()
        self.send_lock = asyncio.Lock()
        self.push_frame = client.register_script(channel.PUSH_FRAME)

    async def send_json(self, value: dict) -> None:
        async with self.send_lock:
            await self.websocket.send_text(json.dumps(value))

    async def send_error(self, code: str, message: str) -> None:
        await self.send_json({"type": "error", "error": {"code": code, "message": message}})

    async def control(self, kind: bytes, index: int = 0, payload: bytes = b"") -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.rpush(self.keys.control, channel.pack(kind, index, payload))
        pipe.expire(self.keys.control, channel.KEY_TTL)
        await pipe.execute()

    async def upstream(self) -> None:
        """Returns when the client closes; SessionError for a message it should not have sent."""
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("bytes") is None:
            raise SessionError("source_expected", "the first message must be the source image (binary)")
        source = message["bytes"]
        await check_source(source, self.ctx, self.owner)
        await self.control(channel.SOURCE, 0, source)
        await self.relay_frames()

    async def relay_frames(self) -> None:
        """Every message is read as it comes (the connection's pings and pongs with it), but frames go
        to the worker at most every `frame_gap`: a frame that arrives sooner waits, replaced by any
        newer one (those count as dropped), so the newest is always the one sent."""
        index, pending, next_push = 0, None, 0.0
        while True:
            wait = None if pending is None else max(0.0, next_push - time.monotonic())
            try:
                message = await asyncio.wait_for(self.websocket.receive(), wait)
            except TimeoutError:
                message = None
            if message is not None and message["type"] == "websocket.disconnect":
                return
            if message is not None and message.get("bytes") is not None:
                self.stats.frame_in(index)
                pending, index = (index, message["bytes"]), index + 1
            elif message is not None:
                await self.text(message.get("text") or "", index)
            if pending is not None and time.monotonic() >= next_push:
                await self.push(*pending)
                pending, next_push = None, time.monotonic() + self.frame_gap

    async def push(self, index: int, frame: bytes) -> None:
        """Check a driving frame and queue it for the worker (at most FRAME_QUEUE wait: the oldest go)."""
        check_frame(frame)
        item = channel.pack(channel.FRAME, index, frame)
        # a frame trimmed from the queue counts as dropped when a newer one is answered
        await self.push_frame(keys=[self.keys.frames], args=[item, channel.FRAME_QUEUE, channel.KEY_TTL])

    async def text(self, text: str, index: int) -> None:
        if self.is_reset(text):
            await self.control(channel.RESET, index)
        else:
            await self.send_error("invalid_message", 'text messages must be {"type": "reset"}')

    @staticmethod
    def is_reset(text: str) -> bool:
        if len(text) > MAX_TEXT_CHARS:
            return False
        try:
            value = json.loads(text)
        except ValueError:
            return False
        return isinstance(value, dict) and value.get("type") == "reset"

    async def downstream(self) -> None:
        """Forwards the worker's answers; WorkerEnded when the worker ends the session or dies."""
        while True:
            popped = await self.client.blpop([self.keys.down], timeout=1)
            item = popped[1] if popped else None
            if item is None:
                if await self.client.exists(self.keys.worker_lease):
                    continue
                item = await self.client.lpop(self.keys.down)  # its last words, pushed before it left
                if item is None:
                    raise WorkerEnded("live_worker_lost", "the live worker stopped answering")
            kind, index, payload = channel.unpack(item)
            if kind == channel.ANIMATED:
                async with self.send_lock:
                    await self.websocket.send_bytes(payload)
                self.stats.frame_out(index)
            elif kind == channel.READY:
                await self.send_json({"type": "ready", **json.loads(payload)})
            elif kind == channel.ERROR:
                error = json.loads(payload)
                raise WorkerEnded(error["code"], error["message"])

    async def heartbeat(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            await self.client.set(self.keys.client_lease, "1", ex=channel.LEASE_TTL)
            await self.send_json(self.stats.message())

    async def run(self) -> None:
        tasks = [asyncio.create_task(step()) for step in (self.upstream, self.downstream, self.heartbeat)]
        worker_ended = False
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            error = next(iter(done)).exception()
            if isinstance(error, SessionError):
                worker_ended = isinstance(error, WorkerEnded)
                await self.close(error.code, error.message)
            elif isinstance(error, redis.exceptions.RedisError):
                await self.close("queue_unavailable", "the live channel (Redis) failed")
            elif error is not None and not isinstance(error, WebSocketDisconnect):
                log.error("live session %s failed", self.keys.session, exc_info=error)
                await self.close("internal_error", "the live session failed")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.release(worker_ended)

    async def close(self, code: str, message: str) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await self.send_error(code, message)
            await self.websocket.close(CLOSE_CODES.get(code, UNSUPPORTED_DATA), code)

    async def release(self, worker_ended: bool) -> None:
        """Delete this side's keys; tell a worker still running the session to end it."""
        try:
            await self.client.delete(self.keys.client_lease, self.keys.frames, self.keys.down)
            if worker_ended:
                await self.client.delete(self.keys.control, self.keys.worker_lease)
            else:
                await self.control(channel.CLOSE)
        except redis.exceptions.RedisError as exc:
            log.warning("live session %s: keys left to expire: %s", self.keys.session, exc)


def check_key(websocket: WebSocket) -> str | None:
    """The caller's owner, API keys as for HTTP; browsers cannot set headers on a WebSocket, so
    `?api_key=` counts too."""
    keys = websocket.app.state.context.api_keys
    key = websocket.query_params.get("api_key")
    if not keys or key is None:
        return caller(websocket)  # the headers; nothing to check when keys are off
    owner = owner_of(key, keys)
    if owner is None:
        raise ApiError(401, "unauthorized", "the API key is not valid")
    return owner


@router.websocket("/live")
async def live(websocket: WebSocket, model: str | None = None) -> None:
    ctx: ServiceContext = websocket.app.state.context
    settings = ctx.settings
    client = aioredis.from_url(settings.queue_url, socket_connect_timeout=2, socket_timeout=10)
    try:
        try:
            owner = check_key(websocket)
            keys = await admit(client, model or settings.default_model)
        except redis.exceptions.RedisError:
            error = ApiError(
                503, "queue_unavailable", "the live channel (Redis) is unreachable; retry shortly"
            )
            await websocket.send_denial_response(error_response(error.status, error.code, error.message))
            return
        except ApiError as error:
            await websocket.send_denial_response(
                error_response(error.status, error.code, error.message, error.headers)
            )
            return
        await websocket.accept()
        await Relay(websocket, client, keys, ctx, owner).run()
    finally:
        await client.aclose()
