"""Attacks on the running service, each one a defect found once: real processes, real sockets, loopback.

One stack (Redis, a worker, the API) serves the module, with short upload deadlines so that stalled
clients are cut off within the tests' time; tests that need a process of their own (a launcher, a
full disk) start it themselves.
"""

import http.server
import json
import os
import resource
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from contract.queue import QUEUE_NAME
from engine.media.video_io import probe_video as worker_probe
from service.auth import hash_key
from service.launcher import free_port, stop_process
from service.probe import ProbeFailed, Prober
from tests.hostile_media import gradient, image_bytes, make_clip, png_coded_mkv
from tests.service_stack import ROOT, ServiceStack, clean_env

pytestmark = pytest.mark.slow
KEY = secrets.token_urlsafe(32)
UPLOAD_IDLE = 2
UPLOAD_DEADLINE = 4
REQUEST_HEAD = 3
STALLED = 2000
DRIPPING = 100  # of the stalled: one byte every DRIP_INTERVAL, never idle for long
DRIP_INTERVAL = 0.5
# Beyond the deadline: the API starts and answers 2,000 requests at once, on a shared 2-core machine
# where that alone took up to 23 s; without deadlines the connections are never closed.
CLOSE_GRACE = 30.0
MAX_SECONDS = 10
MAX_PIXELS = 100 * 100


@pytest.fixture(scope="module")
def stack(tmp_path_factory, small_checkpoint):
    with ServiceStack(
        tmp_path_factory.mktemp("hardening"),
        small_checkpoint.parent,
        API_KEYS=f"tester:{hash_key(KEY)}",
        RATE_LIMIT="0",
        UPLOAD_IDLE_SECONDS=str(UPLOAD_IDLE),
        UPLOAD_DEADLINE_SECONDS=str(UPLOAD_DEADLINE),
        REQUEST_HEAD_SECONDS=str(REQUEST_HEAD),
        MAX_CONNECTIONS=str(STALLED + 500),
        MAX_DRIVING_SECONDS=str(MAX_SECONDS),
        MAX_DRIVING_PIXELS=str(MAX_PIXELS),
        BATCH_SIZE="2",
        WEBHOOK_SECRET="whsec_" + "aGFyZGVuaW5nLXRlc3Rz",
        WEBHOOK_ALLOW_PRIVATE="true",
        WEBHOOK_BACKOFF="0.2",
        WEBHOOK_RETRIES="1",
    ) as service:
        service.http.headers["X-API-Key"] = KEY
        yield service


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    make_clip(folder / "clip.mp4", 1.0, 64, 10)
    (folder / "source.png").write_bytes(image_bytes(gradient(64, 64), "PNG"))
    return folder


def _post(stack: ServiceStack, media: Path, driving: Path | None = None, **fields: str):
    files = {"source": ("s.png", (media / "source.png").read_bytes())}
    files["driving"] = ("d.mp4", (driving or media / "clip.mp4").read_bytes())
    return stack.http.post("/animate", files=files, data={"crop": "none", **fields})


def _job_folders(stack: ServiceStack) -> set[str]:
    root = stack.data_dir / "jobs"
    return {entry.name for entry in root.iterdir()} if root.is_dir() else set()


def _stalled_request(port: int) -> bytes:
    """Headers and the first bytes of a multipart body that claims a megabyte more."""
    boundary = "stall" + secrets.token_hex(8)
    part = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="source"; filename="s.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + b"\x89PNG\r\n\x1a\n"
        + b"\0" * 100
    )
    head = (
        f"POST /animate HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {KEY}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(part) + 1_000_000}\r\n\r\n"
    ).encode()
    return head + part


def _raise_open_files(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"this test needs {needed} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class StalledClients:
    """`count` connections that send headers and part of a body, then nothing (the first `dripping`
    of them: one byte every DRIP_INTERVAL). Records when the server closed each, and what it said."""

    def __init__(self, port: int, count: int, dripping: int):
        self.selector = selectors.DefaultSelector()
        self.opened: dict[socket.socket, float] = {}
        self.closed: dict[socket.socket, float] = {}
        self.answers: dict[socket.socket, bytes] = {}
        self.dripping: list[socket.socket] = []
        for index in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(_stalled_request(port))
            sock.setblocking(False)
            self.opened[sock] = time.monotonic()
            self.answers[sock] = b""
            self.selector.register(sock, selectors.EVENT_READ)
            if index < dripping:
                self.dripping.append(sock)

    def watch(self, until: float) -> None:
        """Read answers and notice closes until every connection is closed or `until` passes."""
        next_drip = time.monotonic()
        while len(self.closed) < len(self.opened) and time.monotonic() < until:
            if time.monotonic() >= next_drip:
                for sock in self.dripping:
                    if sock not in self.closed:
                        try:
                            sock.send(b"\0")
                        except OSError:
                            self._closed(sock)
                next_drip += DRIP_INTERVAL
            for key, _ in self.selector.select(timeout=0.1):
                sock = key.fileobj
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    self.answers[sock] += data
                else:
                    self._closed(sock)

    def _closed(self, sock: socket.socket) -> None:
        if sock not in self.closed:
            self.closed[sock] = time.monotonic()
            self.selector.unregister(sock)

    def close(self) -> None:
        for sock in self.opened:
            sock.close()
        self.selector.close()


def test_stalled_uploads_are_cut_off_and_leave_nothing_behind(stack, media):
    _raise_open_files(STALLED + 1024)
    before = _job_folders(stack)
    clients = StalledClients(stack.port, STALLED, DRIPPING)
    try:
        normal: dict[str, int | str] = {}

        def submit_meanwhile() -> None:  # while every stalled connection is still open
            try:
                normal["animate"] = _post(stack, media).status_code
                normal["healthz"] = stack.http.get("/healthz").status_code
            except httpx.HTTPError as exc:  # reported by the assertion below, not lost in the thread
                normal["error"] = repr(exc)

        meanwhile = threading.Thread(target=submit_meanwhile)
        meanwhile.start()
        clients.watch(until=time.monotonic() + UPLOAD_DEADLINE + CLOSE_GRACE + 5)
        meanwhile.join(90)
        assert normal == {"animate": 202, "healthz": 200}
        assert len(clients.closed) == STALLED, (
            f"{STALLED - len(clients.closed)} stalled connections still open"
        )
        slowest = max(clients.closed[sock] - clients.opened[sock] for sock in clients.opened)
        assert slowest <= UPLOAD_DEADLINE + CLOSE_GRACE, f"the last stalled connection lasted {slowest:.1f} s"
        for answer in clients.answers.values():
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head.lower(), head[:200]
            assert json.loads(body)["error"]["code"] == "upload_timeout"
    finally:
        clients.close()
    assert len(_job_folders(stack) - before) <= 1, "the stalled uploads' folders are removed"


def test_request_heads_sent_a_byte_at_a_time_are_cut_off(stack):
    """Each byte would restart uvicorn's keep-alive wait; the head has a deadline of its own."""
    slow = []
    for _ in range(50):
        sock = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        slow.append(sock)
    opened, open_socks = time.monotonic(), set(slow)
    while open_socks and time.monotonic() < opened + REQUEST_HEAD + 20:
        for sock in list(open_socks):
            try:
                sock.send(b"a")
            except OSError:
                open_socks.discard(sock)
        time.sleep(0.3)
    lasted = time.monotonic() - opened
    for sock in slow:
        sock.close()
    assert not open_socks, f"{len(open_socks)} connections still open after {lasted:.0f} s"
    assert lasted < REQUEST_HEAD + 10
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:  # a prompt head is fine
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200 ")


def test_the_api_stops_promptly_on_sigterm_with_uploads_stalled(stack, media):
    api_env = stack.env
    stack.api.terminate()
    stack.api.wait()
    stack.env = {**api_env, "UPLOAD_DEADLINE_SECONDS": "300", "UPLOAD_IDLE_SECONDS": "300"}
    stack.env["SHUTDOWN_TIMEOUT_SECONDS"] = "2"
    try:
        stack.start_api()
        before = _job_folders(stack)
        clients = StalledClients(stack.port, 20, 0)
        try:
            time.sleep(1)  # the uploads have begun: their folders exist
            assert len(_job_folders(stack) - before) == 20
            stack.api.send_signal(signal.SIGTERM)
            asked = time.monotonic()
            stack.api.wait(30)
            assert time.monotonic() - asked < 10, "the API waits at most SHUTDOWN_TIMEOUT_SECONDS for uploads"
            clients.watch(until=time.monotonic() + 5)
            assert len(clients.closed) == 20
        finally:
            clients.close()
        assert _job_folders(stack) == before
    finally:
        if stack.api.poll() is None:
            stack.api.kill()
            stack.api.wait()
        stack.env = api_env
        stack.start_api()


class HookReceiver:
    """A local HTTP server that accepts every webhook and keeps its Host header and body."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        calls = self.calls

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                calls.append((self.headers["host"], json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self, job_id: str, timeout: float = 60) -> str:
        """The Host header of the job's delivery, once it has arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for host, job in self.calls:
                if job["id"] == job_id:
                    return host
            time.sleep(0.05)
        raise AssertionError(
            f"no webhook for job {job_id}; deliveries: {[job['id'] for _, job in self.calls]}"
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_hostile_webhook_url_does_not_stop_the_other_deliveries(stack, media):
    receiver = HookReceiver()
    try:
        hostile = {
            # fullwidth letters: IDNA maps them to "localhost"; as a Host header they cannot be encoded
            "fullwidth": f"http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54:{receiver.port}/hook",
            "control": f"http://127.0.0.1:{receiver.port}/ho\x01ok",  # no HTTP client sends this
        }
        accepted = {}
        for name, url in hostile.items():
            answer = _post(stack, media, webhook_url=url)
            if answer.status_code == 202:
                accepted[name] = answer.json()["id"]
            else:
                error = answer.json()["error"]
                assert (answer.status_code, error["field"]) == (422, "webhook_url"), answer.text
        assert "control" not in accepted, "a URL with a control character is refused at submission"
        for job_id in accepted.values():
            stack.wait_finished(job_id)
        plain = _post(stack, media, webhook_url=f"http://127.0.0.1:{receiver.port}/hook").json()["id"]
        stack.wait_finished(plain)
        assert receiver.delivered(plain) == f"127.0.0.1:{receiver.port}"
        if "fullwidth" in accepted:  # delivered to the host IDNA names, under its ASCII name
            assert receiver.delivered(accepted["fullwidth"]) == f"localhost:{receiver.port}"
    finally:
        receiver.close()


def _children(pid: int) -> dict[int, str]:
    """The processes `pid` started, by pid: their command lines."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            found[int(child)] = cmdline
    return found


def _wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:g} s")


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_make_serve_restarts_a_crashed_worker_and_keeps_serving(tmp_path, small_checkpoint):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = clean_env(
        DATA_DIR=str(tmp_path / "data"),
        WEIGHTS_DIR=str(small_checkpoint.parent),
        DEFAULT_MODEL="small",
        PORT=str(port),
        LOG_LEVEL="WARNING",
    )
    stderr = (tmp_path / "serve.log").open("w+")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "service.launcher"], env=env, cwd=ROOT, stdout=stderr, stderr=stderr
    )
    try:
        _wait(lambda: _ready(url), 180, "make serve ready")

        def worker_pid() -> int | None:
            found = [pid for pid, cmd in _children(launcher.pid).items() if "worker.run" in cmd]
            return found[0] if found else None

        crashed = worker_pid()
        os.kill(crashed, signal.SIGKILL)
        message = _wait(
            lambda: "restarting" in (text := Path(stderr.name).read_text()) and text, 30, "a restart notice"
        )
        assert "worker" in message and "status -9" in message, message
        assert launcher.poll() is None, "the launcher keeps running"
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200, "the API stayed up"
        restarted = _wait(lambda: (pid := worker_pid()) not in (None, crashed) and pid, 60, "a new worker")
        _wait(lambda: _ready(url), 180, "ready again with the new worker")
        assert restarted != crashed
    finally:
        assert stop_process(launcher, 60) == 0
        stderr.close()
    assert "serve: stopped" in Path(stderr.name).read_text()


def test_tags_that_imitate_ffmpegs_description_do_not_pass_for_limits(stack, media, tmp_path):
    """A title is printed among ffmpeg's own lines: it could forge a short "Duration:" or a small
    "Video:" line. The limits are read from the container's fields, by the API and by the worker."""
    long = make_clip(
        tmp_path / "long.mp4", 3 * MAX_SECONDS, 64, 1, "-metadata", "title=Duration: 00:00:01.00, start: 0"
    )
    wide = make_clip(
        tmp_path / "wide.mp4",
        1.0,
        128,
        10,
        "-metadata",
        "title=Stream #0:0: Video: h264, yuv420p, 64x64, 10 fps",
    )
    for clip, code, said in ((long, "video_too_long", "30.0 s"), (wide, "video_too_large", "128x128")):
        answer = _post(stack, media, clip)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert (error["code"], error["field"]) == (code, "driving") and said in error["message"], error
    assert worker_probe(long).duration == pytest.approx(3 * MAX_SECONDS, abs=0.1)
    assert (worker_probe(wide).width, worker_probe(wide).height) == (128, 128)


def _tree_rss_bytes(root: int) -> int:
    """Resident memory of `root` and every process below it, summed."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grew = {root}, True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= below
        grew = bool(below)
    total = 0
    for pid in tree:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * resource.getpagesize()
        except OSError:
            continue
    return total


PNG_FRAME = 6000  # px: 108 MB a decoded frame
PROBE_TREE_LIMIT = 450 * 1024 * 1024  # the API and its probes; decoding 4 such frames at once: > 600 MB


def test_describing_a_video_decodes_no_frame_and_costs_little(stack, media, tmp_path):
    bomb = png_coded_mkv(tmp_path / "bomb.mkv", PNG_FRAME)
    peak, sampling = [0], threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak[0] = max(peak[0], _tree_rss_bytes(stack.api.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        answers: list = [None] * 4
        threads = [
            threading.Thread(target=lambda i=i: answers.__setitem__(i, _post(stack, media, bomb)))
            for i in range(len(answers))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        sampling.set()
        sampler.join()
    for answer in answers:
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "video_too_large", answer.text
        assert f"{PNG_FRAME}x{PNG_FRAME}" in answer.json()["error"]["message"]
    assert peak[0] < PROBE_TREE_LIMIT, f"the API and its probes peaked at {peak[0] >> 20} MB"


def test_a_probe_runs_within_its_memory_and_time_limits(media, tmp_path):
    noise = png_coded_mkv(tmp_path / "noise.mkv", 1600, 1, noise=True)  # one 7.7 MB packet
    assert Prober(30, 256).read(noise, "matroska", 100).packets == 1
    try:  # 4 MB beyond the fork server's own memory: FFmpeg fails, or drops the packet it cannot hold
        assert Prober(30, 4).read(noise, "matroska", 100).packets == 0
    except ProbeFailed as exc:
        assert "more than 4 MB" in str(exc)
    with pytest.raises(ProbeFailed, match="within"):
        Prober(0.001, 256).read(media / "clip.mp4", "mov", 100)


def test_a_1000_fps_video_is_rendered(stack, media, tmp_path):
    """ffmpeg describes 1000 fps as "1k fps"; read as a number, it is just a fast clip."""
    fast = make_clip(tmp_path / "fast.mp4", 0.03, 64, 1000)
    answer = _post(stack, media, fast)
    assert answer.status_code == 202, answer.text
    assert answer.json()["inputs"]["driving"]["fps"] == 1000
    done = stack.wait_finished(answer.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    assert (done["result"]["fps"], done["result"]["frames"]) == (1000, 30)
    rendered = tmp_path / "rendered.mp4"
    rendered.write_bytes(stack.http.get(f"/jobs/{done['id']}/result").content)
    assert (worker_probe(rendered).fps, worker_probe(rendered).frames) == (1000, 30)


def test_a_truncated_mkv_fails_like_a_truncated_mp4(stack, media, tmp_path):
    """A Matroska file cut short just ends, where MP4's index misses its data: both must fail."""
    whole = make_clip(tmp_path / "whole.mkv", 3.1, 64, 10)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 5])  # the header declares 31 frames; the data holds a few
    answer = _post(stack, media, cut)
    assert answer.status_code == 202, answer.text
    done = stack.wait_finished(answer.json()["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "video_decode_error", done
    assert "truncated" in done["error"]["message"]


def test_api_keys_in_urls_never_reach_the_logs(stack):
    """The web page puts the key in the WebSocket URL (browsers cannot set its headers); uvicorn
    logs request lines whole."""
    from websockets.sync.client import connect

    assert stack.http.get(f"/models?api_key={KEY}").status_code == 200  # the header key; the query too
    try:
        with connect(f"ws://127.0.0.1:{stack.port}/live?model=small&api_key={KEY}", open_timeout=10):
            pass
    except Exception:  # no live worker here: the handshake may be refused, and is logged all the same
        pass
    time.sleep(0.5)  # the lines reach the file
    text = (stack.folder / "api.log").read_text()
    assert "/models?api_key=" in text and "/live?" in text, "both requests were logged"
    assert KEY not in text
    assert "api_key=[redacted]" in text


def _names_no_server_file(message: str, field: str) -> None:
    assert field in message, message
    assert "/" not in message and f"{field}." not in message, f"a server path or file name: {message}"


def test_error_messages_name_the_upload_field_never_a_server_path(stack, media, tmp_path):
    not_a_jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\0" * 30  # passes the sniffing, not Pillow
    files = {"source": ("me.jpg", not_a_jpeg), "driving": ("d.mp4", (media / "clip.mp4").read_bytes())}
    refused = stack.http.post("/animate", files=files)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_image", refused.text
    _names_no_server_file(refused.json()["error"]["message"], "source")

    whole = make_clip(tmp_path / "whole.mkv", 3.1, 64, 10)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 5])
    done = stack.wait_finished(_post(stack, media, cut).json()["id"])
    assert done["error"]["code"] == "video_decode_error", done
    _names_no_server_file(done["error"]["message"], "driving")


def _mount_small_disk(folder: Path, size: str) -> Path:
    folder.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"a small disk needs a tmpfs mount, refused here: {done.stderr.decode().strip()}")
    return folder


def _fill(folder: Path) -> Path:
    """Write into `folder` until its disk is full; the filler file, to remove to free it."""
    filler = folder / "filler"
    with filler.open("wb") as file:
        try:
            while True:
                file.write(b"\0" * 65536)
                file.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_is_a_documented_answer_and_leaves_nothing(tmp_path, media):
    """The store's disk and Redis's append-only file, each full in turn: 507 and 503, never a 500."""
    folder = tmp_path / "stack"
    data = _mount_small_disk(folder / "data", "2m")
    aof = _mount_small_disk(tmp_path / "aof", "1m")
    stack = ServiceStack(folder, tmp_path / "no-weights")
    stack.redis.folder = aof
    try:
        stack.redis.start()
        stack.start_api()
        queue = stack.redis_client()
        assert _post(stack, media).status_code == 202
        jobs = _job_folders(stack)

        filler = _fill(data)
        big = tmp_path / "noise.png"
        big.write_bytes(image_bytes(gradient(64, 64).resize((512, 512)).effect_spread(40), "PNG"))
        files = {
            "source": ("s.png", big.read_bytes()),
            "driving": ("d.mp4", (media / "clip.mp4").read_bytes()),
        }
        full = stack.http.post("/animate", files=files)
        assert full.status_code == 507 and full.json()["error"]["code"] == "insufficient_storage", full.text
        assert int(full.headers["retry-after"]) > 0
        assert _job_folders(stack) == jobs
        filler.unlink()

        filler = _fill(aof)
        queue.set("poke", "1")  # Redis finds it cannot append this to its file, and refuses writes
        _wait(lambda: b"MISCONF" in _write_refused(queue), 30, "Redis refusing writes")
        waiting = queue.llen(f"rq:queue:{QUEUE_NAME}")
        refused = _post(stack, media)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "queue_unavailable", (
            refused.text
        )
        assert _job_folders(stack) == jobs and queue.llen(f"rq:queue:{QUEUE_NAME}") == waiting
        filler.unlink()
        _wait(lambda: not _write_refused(queue), 30, "Redis writing again")
        assert _post(stack, media).status_code == 202
    finally:
        stack.close()
        for mount in (data, aof):
            subprocess.run(["umount", "-l", str(mount)], check=False)


def _write_refused(client) -> bytes:
    import redis

    try:
        client.set("poke", "2")
    except redis.exceptions.ResponseError as exc:
        return str(exc).encode()
    return b""


def test_bad_ranges_of_a_result_are_json_errors(stack, media):
    done = stack.wait_finished(_post(stack, media).json()["id"])
    assert done["status"] == "succeeded", done
    url = f"/jobs/{done['id']}/result"
    size = len(stack.http.get(url).content)
    part = stack.http.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.headers["content-range"] == f"bytes 10-19/{size}"

    backwards = stack.http.get(url, headers={"Range": "bytes=100-50"})
    assert backwards.status_code == 400 and backwards.headers["content-type"] == "application/json"
    assert backwards.json()["error"]["code"] == "invalid_range"
    beyond = stack.http.get(url, headers={"Range": f"bytes={size + 10}-"})
    assert beyond.status_code == 416 and beyond.headers["content-type"] == "application/json"
    assert beyond.json()["error"]["code"] == "range_not_satisfiable"
    assert beyond.headers["content-range"] == f"bytes */{size}"
