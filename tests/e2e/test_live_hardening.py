"""Live mode under attack (issue 26, class 9): real Redis, a live worker, a render worker, uvicorn
and WebSocket clients on loopback.

- A frame or a source that costs too much to decode is refused with its own reason, by its markers,
  and nothing keeps burning CPU once its session has ended.
- A source over the limit gets the documented close, not a cut-off connection.
- Sessions flooding frames are held to their admitted rate: another tenant's batch job keeps its pace.
"""

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from tests.hostile_media import gradient, image_bytes, make_clip, scan_bomb
from tests.live_stack import LiveStack, Received, driving_jpegs, receive, receive_until

pytestmark = pytest.mark.slow
TARGET_FPS = 1  # a 256 px frame of the small networks takes ~40 ms in fp32: two sessions use 8 % of a second
FLOOD_FPS = 100  # frames a second each flooding session sends: faster than any frame renders here
WINDOW_SECONDS = 4.0  # the shortest span the live worker's CPU is measured over: several frames


@pytest.fixture(scope="module")
def weights(tmp_path_factory, small_checkpoint) -> Path:
    """`small` (64 px, the batch jobs') and `wide`: the same networks at 256 px, for live sessions
    whose frames cost enough that flooding them could take the machine."""
    from engine import load_checkpoint, save_checkpoint

    folder = tmp_path_factory.mktemp("live-weights")
    shutil.copy(small_checkpoint, folder / "small.pth.tar")
    model = load_checkpoint(small_checkpoint)
    model.frame_shape = (256, 256)
    save_checkpoint(folder / "wide.pth.tar", model)
    return folder


@pytest.fixture(scope="module")
def stack(tmp_path_factory, weights):
    with LiveStack(
        tmp_path_factory.mktemp("live-hardening"),
        weights,
        render_worker=True,
        LIVE_SESSIONS="2",
        LIVE_TARGET_FPS=str(TARGET_FPS),
        LIVE_IDLE_SECONDS="10",
        PRECISION="fp32",
        BATCH_SIZE="4",
    ) as service:
        yield service


@pytest.fixture
def idle(stack):
    stack.wait_idle()
    yield stack
    stack.wait_idle()


@pytest.fixture(scope="module")
def frames(tmp_path_factory, clip) -> list[bytes]:
    return driving_jpegs(clip, tmp_path_factory.mktemp("frames"))


def _cpu_seconds(root: int) -> float:
    """User and system CPU seconds of `root` and its living children (a probe, a decoder)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat.parent.name) == root or int(fields[1]) == root:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _closed_with(ws, got: Received, timeout: float = 10) -> ConnectionClosed:
    with pytest.raises(ConnectionClosed) as closed:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            receive(ws, got, 1)
    return closed.value


def test_a_frame_too_costly_to_decode_is_refused_by_its_markers(idle, portrait):
    """Such a JPEG passed the header check; the worker then decoded it for 20 s while the client was
    closed with the wrong reason (live_worker_lost)."""
    got = Received()
    with idle.connect() as ws:
        ws.send(portrait.read_bytes())
        receive_until(ws, got, lambda r: r.of_type("ready"))
        worker_cpu = _cpu_seconds(idle.live.pid)
        ws.send(scan_bomb(2000, 2000, 1_000_000))
        closed = _closed_with(ws, got)
    assert got.of_type("error")[-1]["error"]["code"] == "frame_too_large"
    assert "scans" in got.of_type("error")[-1]["error"]["message"]
    assert (closed.rcvd.code, closed.rcvd.reason) == (1009, "frame_too_large")
    time.sleep(1)
    assert _cpu_seconds(idle.live.pid) - worker_cpu < 1.0, "the live worker decoded the frame"


def test_a_source_too_costly_to_decode_is_refused_and_nothing_burns_after_its_session(idle):
    """As a source it was decoded in the API's thread pool with no limit, and went on after its
    session ended: 64 CPU-seconds for 6 sources in 33 s."""
    bomb = scan_bomb(4000, 4000, 1_000_000)
    got = Received()
    with idle.connect() as ws:
        ws.send(bomb)
        closed = _closed_with(ws, got)
    assert got.of_type("error")[-1]["error"]["code"] == "image_too_large"
    assert (closed.rcvd.code, closed.rcvd.reason) == (1003, "image_too_large")
    idle.wait_idle()
    api_cpu = _cpu_seconds(idle.api.pid)
    with idle.connect() as first, idle.connect() as second:  # sessions that leave once they have sent it
        first.send(bomb)
        second.send(bomb)
    time.sleep(3)
    assert _cpu_seconds(idle.api.pid) - api_cpu < 1.5, "the API went on checking sources of ended sessions"


def test_a_source_over_the_limit_gets_its_documented_close(idle):
    """17 MB was cut off by the protocol without a close frame: source_too_large was never sent."""
    got = Received()
    with idle.connect() as ws:
        ws.send(image_bytes(gradient(), "PNG") + bytes(17 * 1024 * 1024))
        closed = _closed_with(ws, got, 30)
    assert got.of_type("error")[-1]["error"]["code"] == "source_too_large"
    assert closed.rcvd is not None and (closed.rcvd.code, closed.rcvd.reason) == (1009, "source_too_large")


class Sender:
    """A live session sending `fps` frames a second and reading its answers. Flooding, it sends far
    faster than it is answered (faster still would only measure the test's own CPU, which shares this
    machine)."""

    def __init__(self, ws: ClientConnection, source: bytes, frames: list[bytes], fps: float):
        self.ws = ws
        self.ws.send(source)
        receive_until(self.ws, Received(), lambda r: r.of_type("ready"))
        self.frames, self.fps, self.answers, self.stop = frames, fps, 0, threading.Event()
        self.threads = [threading.Thread(target=self.send), threading.Thread(target=self.read)]
        self.started = time.monotonic()
        for thread in self.threads:
            thread.start()

    def send(self) -> None:
        index = 0
        while not self.stop.wait(1 / self.fps):
            try:
                self.ws.send(self.frames[index % len(self.frames)])
            except ConnectionClosed:
                return
            index += 1

    def read(self) -> None:
        while not self.stop.is_set():
            try:
                message = self.ws.recv(timeout=0.5)
            except TimeoutError:
                continue
            except ConnectionClosed:
                return
            self.answers += isinstance(message, bytes)

    def close(self) -> float:
        """Answers a second over the flood."""
        self.stop.set()
        seconds = time.monotonic() - self.started
        for thread in self.threads:
            thread.join(10)
        return self.answers / seconds


def _batch_seconds(stack: LiveStack, source: Path, clip: Path) -> float:
    """The worker's render time of one job on `clip`."""
    with source.open("rb") as image, clip.open("rb") as video:
        answer = stack.http.post("/animate", files={"source": image, "driving": video}, data={"crop": "none"})
    assert answer.status_code == 202, answer.text
    done = stack.wait_finished(answer.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    return done["timings"]["render"]


def _batch_beside_sessions(
    stack: LiveStack, source: Path, clip: Path, portrait: Path, frames: list[bytes], fps: float
) -> tuple[float, list[float], float]:
    """A batch job's render time while two sessions each send `fps` frames a second, their answers a
    second, and the live worker's CPU seconds a second over the job and at least WINDOW_SECONDS."""
    with stack.connect("wide") as first, stack.connect("wide") as second:
        senders = [Sender(ws, portrait.read_bytes(), frames, fps) for ws in (first, second)]
        try:
            time.sleep(2)
            live_cpu, started = _cpu_seconds(stack.live.pid), time.monotonic()
            seconds = _batch_seconds(stack, source, clip)
            time.sleep(max(0.0, started + WINDOW_SECONDS - time.monotonic()))
            live_share = (_cpu_seconds(stack.live.pid) - live_cpu) / (time.monotonic() - started)
        finally:
            rates = [sender.close() for sender in senders]
    stack.wait_idle()  # the worker releases a closed session's slot a moment after the client leaves
    return seconds, rates, live_share


def test_flooding_sessions_are_held_to_their_rate_and_leave_batch_jobs_their_pace(
    idle, portrait, frames, tmp_path
):
    """Two sessions sending as fast as they could slowed another tenant's batch job tenfold (2.5 s to
    24 s): the live worker rendered every frame it could. Held to their admitted rate, the sessions
    use what admission counted on and no more, however fast they send: the live worker's CPU while
    they flood is held to what it is while they send at that rate, beside the same batch job on the
    same machine. (A fixed bound of 0.4 core failed on a CI host whose flooding sessions took 0.41
    while answering within their rate: what a frame costs depends on the CPU.) Other work shares
    this machine: each time is the better of two, the bounds loose."""
    source = tmp_path / "source.png"
    source.write_bytes(image_bytes(gradient(64, 64), "PNG"))
    clip = make_clip(tmp_path / "clip.mp4", 6.0, 64, 30)
    paced_share = _batch_beside_sessions(idle, source, clip, portrait, frames, TARGET_FPS)[2]
    alone, flooded, flooded_shares = [], [], []
    for _ in range(2):
        alone.append(_batch_seconds(idle, source, clip))
        seconds, rates, live_share = _batch_beside_sessions(idle, source, clip, portrait, frames, FLOOD_FPS)
        flooded.append(seconds)
        flooded_shares.append(live_share)
        assert all(rate <= 1.25 * TARGET_FPS + 0.5 for rate in rates), f"answers a second: {rates}"
    assert min(flooded_shares) < 1.5 * paced_share + 0.1, (
        f"the live worker used {flooded_shares} of a core flooded, {paced_share:.2f} at the admitted rate"
    )
    assert min(flooded) < 5 * min(alone) + 1, f"the batch job took {flooded} s against {alone} s alone"
