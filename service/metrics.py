"""Prometheus metrics, kept in Redis and read at scrape time.

The counters live in one Redis hash that every process ending a job increments (contract/metrics.py);
GET /metrics turns it into the exposition format with a collector of its own: no per-process
registries to merge, any number of API processes answer the same numbers, and a restarted process
loses nothing.
"""

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from contract.metrics import DURATION_BUCKETS, METRICS_KEY, STAGES
from contract.queue import JobQueue, live_workers


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
