"""A per-key limit on submissions, counted in Redis so every API process shares it.

Fixed one-minute windows: `animate:rate:<owner>:<minute>` is incremented by each POST /animate and
expires with its window. Over RATE_LIMIT the answer is 429 with `Retry-After` the seconds left in
the window. Simple and exact enough for protecting the queue from one client's burst.
"""

import time

from redis import Redis

from service.errors import ApiError

RATE_PREFIX = "animate:rate:"
WINDOW = 60


def check_rate(redis: Redis, owner: str, per_minute: int, now: float | None = None) -> None:
    """Count one submission of `owner`; ApiError 429 when the window's count is over `per_minute`."""
    now = time.time() if now is None else now
    window = int(now // WINDOW)
    key = f"{RATE_PREFIX}{owner}:{window}"
    with redis.pipeline() as pipe:
        pipe.incr(key)
        pipe.expire(key, WINDOW + 5)
        count = pipe.execute()[0]
    if count > per_minute:
        retry_after = max(1, int((window + 1) * WINDOW - now + 0.999))
        raise ApiError(
            429,
            "rate_limited",
            f"more than {per_minute} submissions a minute with this key; retry in {retry_after} s",
            {"Retry-After": str(retry_after)},
        )
