"""Prometheus metrics, kept in Redis and read at scrape time.

Jobs end in worker processes (or in the API, or in the lost-job pass), so counters live in one Redis
hash that every process increments, and GET /metrics turns it into the exposition format with a
collector of its own: no per-process registries to merge, any number of API processes answer the
same numbers, and a restarted process loses nothing.
"""

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import Redis

from service.queue import JobQueue, live_workers

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


class RedisCollector(Collector):
    def __init__(self, queue: JobQueue):
        self.queue = queue

    def collect(self) -> Iterator[Metric]:
        client = self.queue.redis
        values = {k.decode(): float(v) for k, v in client.hgetall(METRICS_KEY).items()}
        yield CounterMetricFamily(
            "animate_jobs_submitted", "Jobs accepted by POST /animate.", value=values.get("submitted", 0)
        )
        yield CounterMetricFamily(
            "animate_jobs_succeeded", "Jobs that rendered their MP4.", value=values.get("succeeded", 0)
        )
        failed = CounterMetricFamily(
            "animate_jobs_failed", "Jobs that failed, by error code.", labels=["code"]
        )
        for name, count in sorted(values.items()):
            if name.startswith("failed:"):
                failed.add_metric([name.removeprefix("failed:")], count)
        yield failed
        yield CounterMetricFamily(
            "animate_jobs_canceled", "Jobs canceled by their client.", value=values.get("canceled", 0)
        )
        yield CounterMetricFamily(
            "animate_frames_rendered", "Frames of the MP4s rendered.", value=values.get("frames", 0)
        )
        stages = CounterMetricFamily(
            "animate_stage_seconds", "Seconds spent in each stage of rendering.", labels=["stage"]
        )
        for stage in STAGES:
            stages.add_metric([stage], values.get(f"stage:{stage}", 0))
        yield stages
        buckets = [(f"{b:g}", values.get(f"duration:le:{b:g}", 0)) for b in DURATION_BUCKETS]
        buckets.append(("+Inf", values.get("duration:count", 0)))
        yield HistogramMetricFamily(
            "animate_job_duration_seconds",
            "Seconds from a job's start on a worker to its end.",
            buckets=buckets,
            sum_value=values.get("duration:sum", 0),
        )
        yield GaugeMetricFamily("animate_queue_depth", "Jobs in the queue.", value=self.queue.waiting())
        yield GaugeMetricFamily("animate_jobs_running", "Jobs being rendered.", value=self.queue.running())
        yield GaugeMetricFamily(
            "animate_workers_alive", "Workers that published their presence.", value=len(live_workers(client))
        )


def exposition(queue: JobQueue) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(queue))
    return generate_latest(registry)
