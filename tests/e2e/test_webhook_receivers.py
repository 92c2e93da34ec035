"""Webhook receivers are hostile too: what a URL's address means, and what a receiver may do.

The address table checks every IPv6 form that carries an IPv4 address (mapped, compatible, NAT64,
6to4) as the IPv4 it carries, and the special ranges a webhook must never reach. The receivers are
real HTTP servers on loopback that answer with a huge body, dribble a byte at a time or never
answer at all, each bounded in time so that it stops by itself; the API is a real process on a real
Redis, its jobs ended by cancelling them (no worker is needed for a webhook).
"""

import json
import re
import secrets
import select
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.auth import hash_key
from tests.hostile_media import gradient, image_bytes, make_clip
from tests.service_stack import ROOT, ServiceStack

LIFETIME = 30.0  # the longest any receiver keeps a connection, whatever the API does
DEADLINE = 3.0  # WEBHOOK_TIMEOUT_SECONDS of the API under test
TENANT_BOUND = 2  # WEBHOOK_CONCURRENCY of the API under test
HUGE_BYTES = 400 * 1024 * 1024
KEYS = {"alice": secrets.token_urlsafe(24), "bob": secrets.token_urlsafe(24)}


@dataclass
class Connection:
    opened: float
    closed: float | None = None  # when the API closed it, if it did within LIFETIME
    job_id: str | None = None
    sent: int = 0  # bytes of the answer sent


class Receiver:
    """A webhook receiver on loopback that answers as `behaviour` says: `ok` (204 at once), `huge`
    (200 and a HUGE_BYTES body), `dribble` (its answer's head a byte a second), `silent` (nothing).
    Each connection ends after LIFETIME seconds at the latest; `connections` says what the API did."""

    def __init__(self, behaviour: str):
        self.behaviour = behaviour
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.connections: list[Connection] = []
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            record = Connection(opened=time.monotonic())
            self.connections.append(record)
            threading.Thread(target=self._serve, args=(conn, record), daemon=True).start()

    def _serve(self, conn: socket.socket, record: Connection) -> None:
        with conn:
            record.job_id = _read_request(conn)
            try:
                getattr(self, f"_{self.behaviour}")(conn, record)
            except OSError:  # the API closed the connection (reset, broken pipe)
                record.closed = time.monotonic()

    def _ok(self, conn: socket.socket, record: Connection) -> None:
        conn.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")

    def _huge(self, conn: socket.socket, record: Connection) -> None:
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {HUGE_BYTES}\r\n\r\n".encode())
        chunk = bytes(1024 * 1024)
        end = record.opened + LIFETIME
        while record.sent < HUGE_BYTES and time.monotonic() < end:
            conn.sendall(chunk)
            record.sent += len(chunk)

    def _dribble(self, conn: socket.socket, record: Connection) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while time.monotonic() < record.opened + LIFETIME:
            if _closed_within(conn, 1.0, record):
                return
            conn.sendall(b"a")

    def _silent(self, conn: socket.socket, record: Connection) -> None:
        _closed_within(conn, record.opened + LIFETIME - time.monotonic(), record)

    def for_job(self, job_id: str, timeout: float) -> Connection:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [c for c in self.connections if c.job_id == job_id]
            if found:
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"no delivery of job {job_id} within {timeout:g} s")

    def close(self) -> None:
        self.stopped.set()
        self.server.close()


def _read_request(conn: socket.socket) -> str | None:
    """The job id of the webhook the API sends (its whole request read, as a receiver would)."""
    conn.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536) or b"\r\n\r\n"
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    while len(body) < length:
        body += conn.recv(65536) or b" " * (length - len(body))
    conn.settimeout(None)
    return json.loads(body).get("id")


def _closed_within(conn: socket.socket, seconds: float, record: Connection) -> bool:
    """Whether the API closed the connection within `seconds`; the time it did goes into `record`."""
    readable, _, _ = select.select([conn], [], [], max(0.0, seconds))
    if readable and not conn.recv(1024):
        record.closed = time.monotonic()
        return True
    return False


def _peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """Redis and the API, no worker: a job ends when it is canceled, and its webhook goes out."""
    stack = ServiceStack(
        tmp_path_factory.mktemp("webhooks"),
        ROOT / "weights",
        API_KEYS=",".join(f"{owner}:{hash_key(key)}" for owner, key in KEYS.items()),
        RATE_LIMIT="0",
        WEBHOOK_SECRET="whsec_" + "d2ViaG9vay1ib3VuZHM=",
        WEBHOOK_ALLOW_PRIVATE="true",
        WEBHOOK_RETRIES="0",
        WEBHOOK_TIMEOUT_SECONDS=str(DEADLINE),
        WEBHOOK_CONCURRENCY=str(TENANT_BOUND),
    )
    try:
        stack.redis.start()
        stack.start_api()
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    make_clip(folder / "clip.mp4", 0.5, 64, 10)
    (folder / "source.png").write_bytes(image_bytes(gradient(64, 64), "PNG"))
    return folder


def _queued(api: ServiceStack, media: Path, owner: str, webhook_url: str) -> str:
    files = {"source": ("s.png", (media / "source.png").read_bytes())}
    files["driving"] = ("d.mp4", (media / "clip.mp4").read_bytes())
    answer = api.http.post(
        "/animate", files=files, data={"webhook_url": webhook_url}, headers={"X-API-Key": KEYS[owner]}
    )
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def _cancel(api: ServiceStack, owner: str, job_id: str) -> float:
    """Cancel the queued job (its webhook is due now); returns when."""
    answer = api.http.delete(f"/jobs/{job_id}", headers={"X-API-Key": KEYS[owner]})
    assert answer.status_code == 202 and answer.json()["status"] == "canceled", answer.text
    return time.monotonic()


def test_a_huge_answer_is_never_read_into_the_api(api, media):
    """The issue's receiver answered 600 MB and took the API from 124 MB to 1.3 GB."""
    huge = Receiver("huge")
    try:
        job_id = _queued(api, media, "alice", huge.url)
        before = _peak_rss_mb(api.api.pid)
        _cancel(api, "alice", job_id)
        delivery = huge.for_job(job_id, timeout=10)
        ended = lambda: delivery.closed is not None or delivery.sent >= HUGE_BYTES  # noqa: E731
        _wait(ended, LIFETIME + 5, "the answer sent, or cut off")
        grown = _peak_rss_mb(api.api.pid) - before
        assert grown < 64, f"the API's peak memory grew by {grown:.0f} MB"
        assert delivery.sent < HUGE_BYTES // 4, f"the API read {delivery.sent >> 20} MB of the answer"
        _wait(lambda: _logged(api, job_id, "webhook delivered"), 10, "the 200 counts as delivered")
    finally:
        huge.close()


def test_slow_receivers_hold_only_their_own_tenants_deliveries(api, media):
    """Alice's receivers dribble or never answer; Bob's webhook goes out at once all the same, and
    each of Alice's deliveries is cut off at its deadline, at most TENANT_BOUND at a time."""
    dribbling, silent, prompt = Receiver("dribble"), Receiver("silent"), Receiver("ok")
    try:
        slow_jobs = [_queued(api, media, "alice", r.url) for r in (dribbling, silent, silent, silent)]
        bobs = _queued(api, media, "bob", prompt.url)
        for job_id in slow_jobs:
            _cancel(api, "alice", job_id)
        dribbling.for_job(slow_jobs[0], timeout=10)
        silent.for_job(slow_jobs[1], timeout=10)
        canceled = _cancel(api, "bob", bobs)
        arrived = prompt.for_job(bobs, timeout=LIFETIME).opened
        assert arrived - canceled < 2.0, f"Bob's webhook waited {arrived - canceled:.1f} s for Alice's"

        slow = [dribbling.for_job(slow_jobs[0], 10)] + [silent.for_job(j, 20) for j in slow_jobs[1:]]
        _wait(lambda: all(d.closed is not None for d in slow), 2 * DEADLINE + 5, "slow deliveries cut off")
        for delivery in slow:
            assert delivery.closed - delivery.opened < DEADLINE + 1.5, delivery
        assert _most_at_once(slow) == TENANT_BOUND
    finally:
        for receiver in (dribbling, silent, prompt):
            receiver.close()


def test_a_delivery_in_flight_when_the_api_stops_is_made_by_the_next_one(api, media):
    silent = Receiver("silent")
    try:
        job_id = _queued(api, media, "bob", silent.url)
        _cancel(api, "bob", job_id)
        first = silent.for_job(job_id, timeout=10)
        api.api.terminate()  # within the delivery's deadline: it is cut short, not failed
        api.api.wait(30)
        _wait(lambda: first.closed is not None, 5, "the delivery cut short")
        assert first.closed - first.opened < DEADLINE, first
        api.start_api()
        _wait(lambda: len([c for c in silent.connections if c.job_id == job_id]) == 2, 30, "delivered again")
    finally:
        silent.close()


def _most_at_once(connections: list[Connection]) -> int:
    """The most connections that were open at one time."""
    events = sorted([(c.opened, 1) for c in connections] + [(c.closed, -1) for c in connections])
    most = now = 0
    for _, change in events:
        now += change
        most = max(most, now)
    return most


def _logged(api: ServiceStack, job_id: str, message: str) -> bool:
    lines = (api.folder / "api.log").read_text().splitlines()
    return any(job_id in line and message in line for line in lines)


def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.05)
