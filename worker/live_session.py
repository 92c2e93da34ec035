"""One live session on a live worker: driving JPEGs in, animated JPEGs out, one frame at a time.

The session is a thread that pops its Redis lists (control before frames, see contract/live_channel.py),
decodes a frame and hands it to the worker's live batcher (worker/live_batcher.py), which renders
it with the other sessions' frames. While a frame renders, newer ones wait in Redis (the API keeps at
most FRAME_QUEUE); when the session takes frames again it renders only the newest and drops the older
ones as stale, so an answer is never more than about two renders behind the camera. Each answer is a
JPEG with a comment segment (COM, right after SOI) reading `frame=<index>`, the index of the driving
frame it animates: the client can match answers to what it sent, in order, with the dropped ones
missing (the API counts those as dropped).

A session is held to the rate it was admitted at (LIVE_TARGET_FPS, worker/live.py): it takes its
next frame no sooner than one frame interval after it took the last, however fast the client
sends, so sessions use what admission counted on and leave the rest of the machine to batch jobs.
Each frame's decoding cost (size and scans, from its JPEG markers) is checked before it is decoded,
as the API checked it.
"""

import json
import logging
import struct
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np
import redis
import torch

from contract import live_channel as channel
from engine.pipeline import to_tensor
from engine.subject.autocrop import image_crop
from engine.subject.cutout import cut_out
from worker.catalog import LoadedModel
from worker.live_batcher import LiveBatcher

POLL_SECONDS = 1.0  # longest wait on the lists, so leases are refreshed and checked every second
JPEG_QUALITY = 90
log = logging.getLogger("worker.live")


class SessionEnded(Exception):
    """Ends a session; `code` and the message go to the client unless the client itself left."""

    def __init__(self, code: str, message: str, client_left: bool = False):
        super().__init__(message)
        self.code = code
        self.client_left = client_left


def decode_image(data: bytes) -> np.ndarray:
    """PNG, JPEG or WebP bytes -> (H, W, 3) RGB uint8; SessionEnded when OpenCV cannot decode them."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise SessionEnded("invalid_frame", "an image could not be decoded")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def check_frame_cost(data: bytes) -> None:
    """SessionEnded unless the driving JPEG's markers show a decoding cost within the frame bound."""
    if refusal := channel.frame_refusal(data):
        raise SessionEnded(*refusal)


def driving_input(data: bytes, height: int, width: int) -> np.ndarray:
    """A driving JPEG -> its centre square resized to the model's (height, width, 3) RGB uint8."""
    check_frame_cost(data)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise SessionEnded("invalid_frame", "a driving frame is not a decodable JPEG")
    h, w = image.shape[:2]
    side = min(h, w)
    square = image[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    if square.shape[:2] != (height, width):
        shrinking = side >= max(height, width)
        square = cv2.resize(
            square, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        )
    return cv2.cvtColor(square, cv2.COLOR_BGR2RGB)


def encode_answer(frame: np.ndarray, index: int) -> bytes:
    """(H, W, 3) RGB uint8 -> JPEG bytes carrying `frame=<index>` in a COM segment after SOI."""
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    )
    if not ok:
        raise SessionEnded("internal_error", "an animated frame could not be encoded")
    data = encoded.tobytes()
    comment = f"frame={index}".encode()
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + data[2:]


class LiveSession(threading.Thread):
    def __init__(
        self,
        session: str,
        loaded: LoadedModel,
        client: redis.Redis,
        stopping: threading.Event,
        on_end: Callable[["LiveSession"], None],
        idle_seconds: float,
        batcher: LiveBatcher,
        precision: str,
        frame_interval: float,
    ):
        super().__init__(name=f"live-{session[:8]}", daemon=True)
        self.session = session
        self.keys = channel.SessionKeys(session)
        self.loaded = loaded
        self.animator = loaded.animator
        self.client = client
        self.stopping = stopping
        self.on_end = on_end
        self.idle_seconds = idle_seconds
        self.last_input = time.monotonic()
        self.state = None
        self.reset_at: int | None = None
        self.batcher = batcher
        self.precision = precision
        self.frames_done = 0
        self.frames_dropped = 0
        self.last_lease = 0.0
        self.frame_interval = frame_interval  # seconds: 1 / the rate the session was admitted at
        self.next_frame_at = 0.0

    def send(self, kind: bytes, index: int = 0, payload: bytes = b"") -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.rpush(self.keys.down, channel.pack(kind, index, payload))
        pipe.expire(self.keys.down, channel.KEY_TTL)
        pipe.execute()

    def run(self) -> None:
        ended = SessionEnded("closed", "the session ended", client_left=True)
        try:
            self.serve()
        except SessionEnded as exc:
            ended = exc
        except redis.exceptions.RedisError as exc:
            log.warning("session %s: Redis failed: %s", self.session, exc)
        except Exception:
            log.exception("session %s failed", self.session)
            ended = SessionEnded("internal_error", "the live worker failed to render")
        finally:
            if not ended.client_left:
                self.farewell(ended)
            self.cleanup(ended.client_left)
            self.on_end(self)

    def farewell(self, ended: SessionEnded) -> None:
        """Tell the client why its session ends (the API closes the WebSocket with that reason)."""
        try:
            self.send(channel.ERROR, payload=json.dumps({"code": ended.code, "message": str(ended)}).encode())
        except redis.exceptions.RedisError as exc:
            log.warning("session %s: could not say why it ended: %s", self.session, exc)

    def cleanup(self, client_left: bool) -> None:
        """Delete what this side owns. The down list goes too when the client left; otherwise the API,
        which reads it every second, has LEASE_TTL seconds to take the last message, if it is alive."""
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(self.keys.frames, self.keys.control, self.keys.worker_lease)
        if client_left:
            pipe.delete(self.keys.down)
        else:
            pipe.expire(self.keys.down, channel.LEASE_TTL)
        try:
            pipe.execute()
        except redis.exceptions.RedisError as exc:
            log.warning("session %s: keys left to expire: %s", self.session, exc)

    def keep_leases(self, now: float) -> None:
        """Refresh this side's lease; SessionEnded when the API's lapsed (it closed or died)."""
        if now - self.last_lease < POLL_SECONDS:
            return
        self.last_lease = now
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.keys.worker_lease, "1", ex=channel.LEASE_TTL)
        pipe.exists(self.keys.client_lease)
        if not pipe.execute()[1]:
            raise SessionEnded("client_gone", "the API side of the session is gone", client_left=True)

    def check_idle(self, now: float) -> None:
        """A session holds a slot of a bounded few: one that sends nothing is closed."""
        if now - self.last_input <= self.idle_seconds:
            return
        if self.state is None:
            raise SessionEnded("source_timeout", f"no source image within {self.idle_seconds:g} s")
        raise SessionEnded("idle_timeout", f"no driving frame for {self.idle_seconds:g} s")

    def serve(self) -> None:
        while True:
            if self.stopping.is_set():
                raise SessionEnded("live_worker_stopping", "the live worker is shutting down; reconnect")
            self.keep_leases(time.monotonic())
            item = self.client.blpop([self.keys.control, self.keys.frames], timeout=POLL_SECONDS)
            if item is None:
                self.check_idle(time.monotonic())
                continue
            self.last_input = time.monotonic()
            kind, index, payload = channel.unpack(item[1])
            if kind == channel.CLOSE:
                raise SessionEnded("closed", "the client closed the session", client_left=True)
            if kind == channel.SOURCE:
                self.prepare(payload)
            elif kind == channel.RESET:
                self.reset_at = index
            elif kind == channel.FRAME and self.state is not None:
                self.pace()
                self.animate(*self.newest(index, payload))

    def pace(self) -> None:
        """Wait until a frame interval has passed since the last frame was taken, keeping the
        leases; the frames that arrive meanwhile wait in Redis (the newest will be rendered)."""
        while (wait := self.next_frame_at - time.monotonic()) > 0 and not self.stopping.is_set():
            time.sleep(min(wait, POLL_SECONDS))
            self.keep_leases(time.monotonic())
        self.next_frame_at = time.monotonic() + self.frame_interval

    def newest(self, index: int, payload: bytes) -> tuple[int, bytes]:
        """The newest driving frame waiting, this one or a later one; the older ones are dropped."""
        later = self.client.lpop(self.keys.frames, channel.FRAME_QUEUE) or []
        for item in later:
            kind, later_index, later_payload = channel.unpack(item)
            if kind == channel.FRAME:
                self.frames_dropped += 1
                index, payload = later_index, later_payload
        return index, payload

    @torch.inference_mode()
    def prepare(self, data: bytes) -> None:
        """Frame the source like a render does (around its subject), then encode it once."""
        height, width = self.loaded.model.frame_shape
        image = decode_image(data)
        _, box = image_crop(image)
        source = to_tensor(cut_out(image, box, width, height)[None], self.animator.device)
        self.state = self.animator.prepare_source(source, precision=self.precision)
        ready = {"model": self.loaded.name, "width": width, "height": height}
        self.send(channel.READY, payload=json.dumps(ready).encode())

    def animate(self, index: int, data: bytes) -> None:
        height, width = self.loaded.model.frame_shape
        frame = driving_input(data, height, width)
        if self.reset_at is not None and index >= self.reset_at:
            self.state.kp_initial = None  # the next frame rendered becomes the anchor
            self.reset_at = None
        animated = self.batcher.render(
            self.animator, self.state, frame, lambda: self.keep_leases(time.monotonic())
        )
        self.send(channel.ANIMATED, index, encode_answer(animated, index))
        self.frames_done += 1
