"""`Idempotency-Key` on POST /animate: a client that retries after a lost answer gets the same job.

The first request with a key records, in Redis and for as long as its job is kept, the key (per
owner, hashed) -> the job id and the request's digest (every part's name and content). A later
request with the same key and the same digest gets that job; with another digest, 409. A request
that was refused (400, 413...) releases its key, so a retry is judged afresh.
"""

import hashlib
import json
import re

from redis import Redis

from service.errors import ApiError

IDEMPOTENCY_PREFIX = "animate:idempotency:"
HEADER = "Idempotency-Key"
KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces


def parse_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not KEY_PATTERN.match(value):
        raise ApiError(
            400,
            "invalid_idempotency_key",
            f"{HEADER} must be 1 to 255 printable ASCII characters without spaces",
            field=HEADER,
        )
    return value


def _redis_key(owner: str | None, key: str) -> str:
    return IDEMPOTENCY_PREFIX + hashlib.sha256(f"{owner or ''}\0{key}".encode()).hexdigest()


def claim(redis: Redis, owner: str | None, key: str, digest: str, job_id: str, ttl: int) -> str | None:
    """Record `key` for `job_id`; None when it is new, else the job id it was first given for this
    same digest. 409 when it was given for another request."""
    name = _redis_key(owner, key)
    record = json.dumps({"digest": digest, "job": job_id})
    for _ in range(3):
        if redis.set(name, record, nx=True, ex=ttl):
            return None
        found = redis.get(name)
        if found is not None:
            break
    else:
        return None
    earlier = json.loads(found)
    if earlier["digest"] != digest:
        raise ApiError(
            409,
            "idempotency_key_reused",
            f"this {HEADER} was used for a different request (job {earlier['job']})",
            field=HEADER,
        )
    return earlier["job"]


def release(redis: Redis, owner: str | None, key: str, job_id: str) -> None:
    """Forget `key` if it still names `job_id` (its request was refused)."""
    name = _redis_key(owner, key)
    found = redis.get(name)
    if found is not None and json.loads(found)["job"] == job_id:
        redis.delete(name)
