"""The Redis channel between the API and live workers: key names, message framing, presence, admission.

Both sides import this module (it needs only redis and contract.images), so the wire format and
the frame bound live in one place. A live
session `<sid>` (a UUID4 chosen by the API) has these keys, all with short TTLs so that nothing
outlives two dead ends:

- `animate:live:session:<sid>:frames`: driving frames, API -> worker, at most FRAME_QUEUE long. The
  API pushes with PUSH_FRAME (Lua, atomic): past the cap the oldest frames are dropped.
- `animate:live:session:<sid>:control`: source image, reset, close; API -> worker, never dropped.
  The worker pops control before frames.
- `animate:live:session:<sid>:down`: the admission answer, "ready", animated frames and errors,
  worker -> API, in order.
- `animate:live:session:<sid>:client` / `:worker`: leases each side refreshes every second; the other
  side ends the session when one lapses (a crashed API or worker frees the session within seconds).

A live worker publishes `animate:live:worker:<name>` (models, capacity, sessions open) and takes
session requests from its own list `animate:live:open:<name>`, so the worker alone decides whether it
has room: the bound on sessions holds however many API processes there are.

Every list item is one byte of kind, a 4-byte big-endian frame index (0 where none applies), then
the payload: image bytes or UTF-8 JSON.
"""

import json
import struct
from dataclasses import dataclass
from typing import Any

from redis import Redis

from contract.images import ImageRefused, check_jpeg, jpeg_header
from contract.queue import PRESENCE_TTL

PREFIX = "animate:live:"
WORKER_PREFIX = PREFIX + "worker:"
OPEN_PREFIX = PREFIX + "open:"
SESSION_PREFIX = PREFIX + "session:"

FRAME_QUEUE = 2  # driving frames waiting per session, at most: "a frame or two"
# A driving frame's decoding cost, judged by the API and again by the worker before it decodes:
MAX_FRAME_BYTES = 2 * 1024 * 1024
MAX_FRAME_PIXELS = 4096 * 4096
FRAME_SCAN_ALLOWANCE = 2  # pixels x scans per pixel allowed (contract/images.py); camera JPEGs have 1
LEASE_TTL = 5  # seconds a side's lease lives without a refresh (refreshed every second)
KEY_TTL = 60  # seconds any session list lives without a write: the last resort of cleanup
ADMISSION_TIMEOUT = 5.0  # seconds the API waits for a worker to answer a session request

# Kinds, API -> worker
SOURCE = b"S"  # payload: the source image (PNG, JPEG or WebP)
RESET = b"R"  # index: the first frame to anchor relative motion on
CLOSE = b"C"
FRAME = b"F"  # index, payload: a driving JPEG
# Kinds, worker -> API
ACCEPTED = b"a"
READY = b"r"  # payload JSON: {"model", "width", "height"}
ANIMATED = b"f"  # index, payload: the animated JPEG
ERROR = b"e"  # payload JSON: {"code", "message"}; the worker has ended the session

HEADER = struct.Struct(">cI")

# KEYS[1] the frames list; ARGV: item, cap, ttl. Returns how many frames were dropped to stay at cap.
PUSH_FRAME = """
local n = redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
local cap = tonumber(ARGV[2])
if n > cap then
  redis.call('LTRIM', KEYS[1], n - cap, -1)
  return n - cap
end
return 0
"""


def pack(kind: bytes, index: int = 0, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, index) + payload


def pack_json(kind: bytes, value: dict[str, Any]) -> bytes:
    return pack(kind, 0, json.dumps(value).encode())


def unpack(item: bytes) -> tuple[bytes, int, bytes]:
    """(kind, index, payload) of one list item."""
    kind, index = HEADER.unpack_from(item)
    return kind, index, item[HEADER.size :]


@dataclass(frozen=True)
class SessionKeys:
    session: str

    def _key(self, name: str) -> str:
        return f"{SESSION_PREFIX}{self.session}:{name}"

    @property
    def frames(self) -> str:
        return self._key("frames")

    @property
    def control(self) -> str:
        return self._key("control")

    @property
    def down(self) -> str:
        return self._key("down")

    @property
    def client_lease(self) -> str:
        return self._key("client")

    @property
    def worker_lease(self) -> str:
        return self._key("worker")

    def all(self) -> list[str]:
        return [self.frames, self.control, self.down, self.client_lease, self.worker_lease]


def session_request(session: str, model: str, deadline: float) -> bytes:
    """What the API pushes on a worker's open list; `deadline` (epoch seconds) is when the API gives up."""
    return json.dumps({"session": session, "model": model, "deadline": deadline}).encode()


def publish_live_worker(redis: Redis, info: dict[str, Any]) -> None:
    redis.set(WORKER_PREFIX + info["name"], json.dumps(info), ex=PRESENCE_TTL)


def withdraw_live_worker(redis: Redis, name: str) -> None:
    redis.delete(WORKER_PREFIX + name)


def parse_presence(values: list[bytes | None]) -> list[dict[str, Any]]:
    return [json.loads(value) for value in values if value is not None]


def candidates(workers: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    """Live workers serving `model`, the least loaded first."""
    serving = [w for w in workers if any(m["name"] == model for m in w.get("models", []))]
    return sorted(serving, key=lambda w: w["sessions"] / max(w["capacity"], 1))


def frame_refusal(data: bytes) -> tuple[str, str] | None:
    """(code, message) when a driving JPEG's markers show it unreadable or over the frame bound, None
    when within: the API and the live worker refuse a frame by this one rule, decoding nothing."""
    header = jpeg_header(data)
    if header is None or not (header.width and header.height and header.scans):
        return "invalid_frame", "a driving frame is not a readable JPEG"
    try:
        check_jpeg(header, MAX_FRAME_PIXELS, FRAME_SCAN_ALLOWANCE, "a driving frame")
    except ImageRefused as exc:
        return "frame_too_large", exc.message
    return None
