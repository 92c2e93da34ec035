"""Job counters kept in Redis: every process that ends a job increments one hash.

Jobs end in worker processes, in the API or in the lost-job pass, so the counters live in one Redis
hash; the API turns it into Prometheus' exposition format at scrape time (service/metrics.py).
"""

from redis import Redis

METRICS_KEY = "animate:metrics"
DURATION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
STAGES = ("decode", "inference", "encode")


def record_submitted(client: Redis) -> None:
    client.hincrby(METRICS_KEY, "submitted", 1)


def record_finished(
    client: Redis,
    status: str,
    code: str | None = None,
    seconds: float | None = None,
    frames: int = 0,
    stages: dict[str, float] | None = None,
) -> None:
    """Count a job that reached `status` (succeeded, failed with `code`, canceled)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.hincrby(METRICS_KEY, f"failed:{code}" if status == "failed" else status, 1)
        if frames:
            pipe.hincrby(METRICS_KEY, "frames", frames)
        for stage, spent in (stages or {}).items():
            if stage in STAGES and spent:
                pipe.hincrbyfloat(METRICS_KEY, f"stage:{stage}", spent)
        if seconds is not None:
            pipe.hincrbyfloat(METRICS_KEY, "duration:sum", seconds)
            pipe.hincrby(METRICS_KEY, "duration:count", 1)
            for bound in DURATION_BUCKETS:
                if seconds <= bound:
                    pipe.hincrby(METRICS_KEY, f"duration:le:{bound:g}", 1)
        pipe.execute()
