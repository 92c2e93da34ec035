"""Run one worker: load every model once, then render queued jobs until asked to stop.

Why RQ's SimpleWorker: the default `Worker` forks a work horse for every job and `SpawnWorker` starts
a new interpreter for every job. Either way the job runs in a process that does not have the model
the worker loaded (a spawned one must load it again, per job), and CUDA cannot be used in a child
forked after the parent initialised it. SimpleWorker runs each job in this very process, so the
weights stay loaded, on the GPU where there is one, from one job to the next. Two consequences are
handled here: it does not refresh its job's heartbeat while the job runs (RQ gives the job's timeout
plus a minute instead, so a SIGKILLed worker's job would look alive for half an hour), so a thread
refreshes it every HEARTBEAT_INTERVAL with a TTL of three intervals and a dead worker's job is found
within about a minute (contract/maintenance.py, whose handler this worker's maintenance runs too);
and it cannot kill a running job, so cancellation is our own Redis flag, read between frame batches.
A job's retries are only for a worker that died: an error the render raised fails the job at once.

SIGINT or SIGTERM stops the worker within WORKER_STOP_GRACE (worker/shutdown.py): no new job, the
current one finished if it can be in time, else handed back to the front of the queue for the next
worker, neither failed nor counted as a retry.
"""

import argparse
import itertools
import logging
import signal
import sys
import threading

import redis
from rq import SimpleWorker
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from contract.logs import current_job_id
from contract.maintenance import LostJobHandler
from contract.queue import QUEUE_NAME, WORKER_PREFIX, JobQueue, connect, host_is_present
from contract.settings import Settings
from contract.storage import open_store
from engine.hardware import default_precision
from worker import jobs, process
from worker.shutdown import StopRequest

log = logging.getLogger("worker")


class JobHeartbeat(threading.Thread):
    """Refreshes the running job's heartbeat (and the worker's) while the render holds the main thread."""

    def __init__(self, worker: "ModelWorker", job: Job, execution: Execution):
        super().__init__(name="heartbeat", daemon=True)
        self.worker = worker
        self.job = job
        self.execution = execution
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.worker.heartbeat_interval):
            try:
                self.worker.maintain_heartbeats(self.job, self.execution)
            except redis.exceptions.RedisError as exc:
                log.warning("could not refresh the job's heartbeat: %s", exc)

    def stop(self) -> None:
        self.done.set()
        self.join()


class ModelWorker(SimpleWorker):
    """A SimpleWorker that keeps its job's heartbeat alive and, asked to stop, lets its job finish
    within the stop grace or hands it back to the queue."""

    max_connection_wait_time = 5.0  # back in service within seconds of Redis returning

    def __init__(self, *args, context: jobs.WorkerContext, heartbeat_interval: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.context = context
        self.heartbeat_interval = heartbeat_interval

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return 3 * self.heartbeat_interval

    def request_stop(self, signum, frame):
        self.context.stop.request()
        super().request_stop(signum, frame)  # no new job; a second signal comes to request_force_stop

    def _install_signal_handlers(self):
        super()._install_signal_handlers()
        if self.context.stop.requested.is_set():  # a signal came before RQ's handlers: take no job
            self._stop_requested = True

    def request_force_stop(self, signum, frame):
        """A second signal: the job handed back at its next frame batch (RQ's cold exit would fail it)."""
        self.context.stop.request()

    def unsubscribe(self):
        """RQ's, with the listener told to stop before it can read the UNSUBSCRIBE reply. In RQ's order
        (unsubscribe, then stop) the listener often reads the reply first, then waits up to a minute for
        a new subscription while `stop()` joins it: the worker then outlived its grace."""
        if self.pubsub_thread:
            self.pubsub_thread.stop(timeout=0)  # its flag cleared; the reply ends its loop
            self.pubsub.unsubscribe()
            self.pubsub_thread.join(timeout=1)
            self.pubsub.close()

    def handle_exception(self, job: Job, *exc_info):
        if job.id not in self.context.interrupted:  # a hand-back is no error: nothing to log or handle
            super().handle_exception(job, *exc_info)

    def handle_job_failure(self, job: Job, queue: Queue, *args, **kwargs):
        if job.id in self.context.interrupted:
            self.hand_back(job, queue, kwargs.get("execution"))
            return
        retries, job.retries_left = job.retries_left, 0  # raised by the render: final, not retried
        try:
            super().handle_job_failure(job, queue, *args, **kwargs)
        finally:
            job.retries_left = retries

    def hand_back(self, job: Job, queue: Queue, execution: Execution | None) -> None:
        """The interrupted job back at the front of the queue as it was queued: no failure recorded,
        its retries kept."""
        self.context.interrupted.discard(job.id)
        job.started_at = job.ended_at = None
        with self.connection.pipeline() as pipeline:  # one transaction: never both running and queued
            pipeline.multi()  # RQ 3 enqueues on a pipeline that already holds commands only inside MULTI
            self.cleanup_execution(job, pipeline=pipeline, execution=execution)
            queue._enqueue_job(job, pipeline=pipeline, at_front=True)  # as RQ's own retry queues a job
            pipeline.execute()
        self.log.info("job %s handed back to the queue: the worker is stopping", job.id)

    def execute_job(self, job: Job, queue: Queue):
        execution = self.prepare_execution(job)
        heartbeat = JobHeartbeat(self, job, execution)
        token = current_job_id.set(job.id)
        heartbeat.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            heartbeat.stop()
            current_job_id.reset(token)
        self.set_state(WorkerStatus.IDLE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.run", description="Run one animation worker.")
    parser.add_argument("--healthcheck", action="store_true", help="exit 0 if this host's worker is alive")
    args = parser.parse_args(argv)
    settings = Settings()
    if args.healthcheck:
        return 0 if host_is_present(settings.queue_url, WORKER_PREFIX) else 1
    try:
        models = process.start("worker", settings, settings.batch_size)
    except process.StartError as exc:
        return process.fail("worker", exc)

    name = process.process_name()
    client = connect(settings.queue_url)
    queue = JobQueue(client, settings.job_timeout, settings.result_ttl)
    scratch = process.scratch_folder(settings, name)
    stop = StopRequest(settings.worker_stop_grace)
    context = jobs.WorkerContext(models, settings, queue, open_store(settings), scratch, stop)
    lost_jobs = LostJobHandler(client)
    jobs.install(context)

    def stop_between_jobs(signum, frame) -> None:  # RQ installs its own handlers while work() runs
        context.stop.request()

    precision = settings.precision or default_precision(settings.worker_device)
    described = [m.describe(precision).model_dump(mode="json") for m in models.values()]
    info = {"name": name, "device": settings.worker_device, "models": described}
    presence = process.Presence(client, WORKER_PREFIX + name, lambda: info)
    try:
        for incarnation in itertools.count():
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, stop_between_jobs)
            if not process.wait_for_redis(client, context.stop.requested):
                break
            presence.publish()
            if not presence.is_alive():
                presence.start()
            worker = ModelWorker(
                [QUEUE_NAME],
                name=f"{name}.{incarnation}",  # RQ refuses a name whose previous owner did not sign off
                connection=client,
                serializer=JSONSerializer,
                context=context,
                worker_ttl=60,
                heartbeat_interval=settings.heartbeat_interval,
                maintenance_interval=settings.maintenance_interval,
                exception_handlers=[lost_jobs],
            )
            try:
                worker.work(logging_level=settings.log_level.upper())
            except redis.exceptions.RedisError as exc:
                log.warning("lost Redis: %s", exc)
            if worker._stop_requested or context.stop.requested.is_set():
                break
            context.stop.requested.wait(1)  # RQ gave up on an error it logged; start over once Redis answers
    finally:
        presence.stop()
    log.info("worker %s stopped", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
