"""The service with a live worker (`python -m worker.live`), and a WebSocket client for /live."""

import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from websockets.sync.client import ClientConnection, connect

from contract import live_channel as channel
from service.launcher import stop_process, wait_until
from tests.service_stack import ROOT, START_TIMEOUT, ServiceStack, cut_clip


class LiveStack(ServiceStack):
    def __init__(self, folder: Path, weights_dir: Path, render_worker: bool = False, **settings: str):
        super().__init__(folder, weights_dir, **settings)
        self.render_worker = render_worker
        self.live: subprocess.Popen | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/live"

    def start(self) -> "LiveStack":
        self.redis.start()
        if self.render_worker:
            self.start_worker()
        self.start_live_worker()
        self.start_api()
        return self

    def start_live_worker(self) -> None:
        log = (self.folder / "live.log").open("ab")
        command = [sys.executable, "-m", "worker.live"]
        self.live = subprocess.Popen(command, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        pid = self.live.pid
        wait_until(lambda: self.live_worker(pid) is not None, START_TIMEOUT, "the live worker", self.live)

    def live_worker(self, pid: int | None = None) -> dict | None:
        """What the live worker (of `pid`, else the running one) publishes; None before it does."""
        pid = pid or self.live.pid
        value = self.redis_client().get(f"{channel.WORKER_PREFIX}{socket.gethostname()}.{pid}")
        return json.loads(value) if value else None

    def session_keys(self) -> list[bytes]:
        return list(self.redis_client().scan_iter(match=channel.SESSION_PREFIX + "*"))

    def wait_idle(self, timeout: float = 15.0) -> None:
        """Until the live worker has no session open and no session key is left in Redis."""

        def idle() -> bool:
            worker = self.live_worker()
            return worker is not None and worker["sessions"] == 0 and not self.session_keys()

        wait_until(idle, timeout, "the live sessions to be released")

    def connect(self, model: str | None = None, **params: str) -> ClientConnection:
        query = "&".join(f"{k}={v}" for k, v in {"model": model, **params}.items() if v is not None)
        return connect(f"{self.ws_url}?{query}" if query else self.ws_url, max_size=None, open_timeout=30)

    def close(self) -> None:
        if self.live is not None:
            stop_process(self.live)
        super().close()


@dataclass
class Answer:
    index: int
    image: np.ndarray  # (H, W, 3) BGR uint8


@dataclass
class Received:
    answers: list[Answer] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m["type"] == kind]


def answer_index(data: bytes) -> int:
    """The `frame=<index>` of the COM segment the server puts right after the JPEG's SOI."""
    assert data[:4] == b"\xff\xd8\xff\xfe", "an answer starts with SOI then a COM segment"
    length = int.from_bytes(data[4:6], "big")
    text = data[6 : 4 + length].decode()
    assert text.startswith("frame="), text
    return int(text.removeprefix("frame="))


def receive(ws: ClientConnection, into: Received, timeout: float) -> bool:
    """One message into `into`; False when none came within `timeout` seconds."""
    try:
        message = ws.recv(timeout=timeout)
    except TimeoutError:
        return False
    if isinstance(message, bytes):
        image = cv2.imdecode(np.frombuffer(message, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None, "an answer is a decodable JPEG"
        into.answers.append(Answer(answer_index(message), image))
    else:
        into.messages.append(json.loads(message))
    return True


def receive_until(ws: ClientConnection, into: Received, done, timeout: float = 30.0) -> Received:
    deadline = time.monotonic() + timeout
    while not done(into):
        assert time.monotonic() < deadline, (
            f"gave up waiting; got {len(into.answers)} answers, {into.messages}"
        )
        receive(ws, into, 0.5)
    return into


def driving_jpegs(clip: Path, folder: Path, seconds: float = 2, size: int = 96) -> list[bytes]:
    """The first seconds of a real clip as JPEG frames of `size` px (the server resizes to the model)."""
    raw = cut_clip(clip, folder / "driving.yuv", "-t", str(seconds), "-vf", f"scale={size}:{size}",
                   "-f", "rawvideo", "-pix_fmt", "bgr24", "-c:v", "rawvideo")  # fmt: skip
    frames = np.fromfile(raw, np.uint8).reshape(-1, size, size, 3)
    return [cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for frame in frames]
