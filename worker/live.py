"""`python -m worker.live`: a live worker, animating webcam frames for up to LIVE_SESSIONS clients.

Why a process of its own rather than a thread in the RQ worker (`make serve` starts both):
- Latency. A queued render keeps the RQ worker busy for minutes with decode and encode threads, big
  batches and torch's intra-op pool sized for throughput. A live frame is a batch of one that must
  be back within tens of milliseconds; sharing the interpreter (GIL) and the thread pool with a
  render would put every live frame behind a batch. Here torch runs one intra-op thread per session
  on CPU (a 64 px frame gains nothing from more and loses much when cores are contended), sessions
  render in parallel in their own threads, and the OS shares the cores between this process and a
  render.
- Control. RQ's SimpleWorker owns the main thread, its signal handlers and its job timeout (SIGALRM);
  live sessions would have to survive its restarts between incarnations. Here stopping is simple:
  every session tells its client (`live_worker_stopping`) and ends.
- Scaling and failure. Live capacity (LIVE_SESSIONS per process, processes per GPU) is sized apart
  from batch capacity, and a crash here drops live sessions, not queued jobs.
The cost is a second copy of the weights (a few MB for the starter model; on a GPU also a second
CUDA context), which is small next to what a session needs.

Protocol with the API: contract/live_channel.py. Sessions: worker/live_session.py.
"""

import argparse
import json
import logging
import signal
import sys
import threading
import time

import redis
import torch

from contract import live_channel as channel
from contract.queue import connect, host_is_present
from contract.settings import Settings
from contract.storage import InvalidJobId, parse_job_id
from worker import process
from worker.catalog import LoadedModel
from worker.live_session import LiveSession

STOP_TIMEOUT = 10.0
log = logging.getLogger("worker.live")


class LiveServer:
    """Takes session requests from this worker's open list and runs each admitted session in a thread."""

    def __init__(self, name: str, models: dict[str, LoadedModel], client: redis.Redis, settings: Settings):
        self.name = name
        self.models = models
        self.client = client
        self.capacity = settings.live_sessions
        self.device = settings.worker_device
        self.idle_seconds = settings.live_idle_seconds
        self.stopping = threading.Event()
        self.sessions: dict[str, LiveSession] = {}
        self.lock = threading.Lock()
        self.last_presence = 0.0

    @property
    def open_key(self) -> str:
        return channel.OPEN_PREFIX + self.name

    def presence(self) -> dict:
        with self.lock:
            open_sessions = len(self.sessions)
        return {
            "name": self.name,
            "device": self.device,
            "models": [m.describe() for m in self.models.values()],
            "capacity": self.capacity,
            "sessions": open_sessions,
        }

    def publish(self) -> None:
        try:
            channel.publish_live_worker(self.client, self.presence())
            self.last_presence = time.monotonic()
        except redis.exceptions.RedisError as exc:
            log.warning("could not publish presence: %s", exc)

    def answer(self, keys: channel.SessionKeys, kind: bytes, payload: dict) -> None:
        pipe = self.client.pipeline(transaction=False)
        if kind == channel.ACCEPTED:
            pipe.set(keys.worker_lease, "1", ex=channel.LEASE_TTL)
        pipe.rpush(keys.down, channel.pack(kind, 0, json.dumps(payload).encode()))
        pipe.expire(keys.down, channel.KEY_TTL)
        pipe.execute()

    def open(self, request: bytes) -> None:
        """Admit or refuse one session request; the API waits for the answer on the session's down list."""
        try:
            fields = json.loads(request)
            session = parse_job_id(fields["session"])
            model, deadline = str(fields["model"]), float(fields["deadline"])
        except (ValueError, KeyError, TypeError, InvalidJobId) as exc:
            log.warning("ignoring a malformed session request: %s", exc)
            return
        if time.time() > deadline:
            return  # the API has stopped waiting and moved on
        keys = channel.SessionKeys(session)
        if model not in self.models:
            message = f"model {model!r} is not loaded by live worker {self.name}"
            self.answer(keys, channel.ERROR, {"code": "unknown_model", "message": message})
            return
        with self.lock:
            full = len(self.sessions) >= self.capacity
            if not full:
                thread = LiveSession(
                    session, self.models[model], self.client, self.stopping, self.ended, self.idle_seconds
                )
                self.sessions[session] = thread
        if full:
            message = f"live worker {self.name} has all its {self.capacity} sessions in use"
            self.answer(keys, channel.ERROR, {"code": "live_full", "message": message})
            return
        self.answer(keys, channel.ACCEPTED, {"worker": self.name})
        thread.start()
        self.publish()
        log.info("session %s opened (%s), %d of %d in use", session, model, len(self.sessions), self.capacity)

    def ended(self, session: LiveSession) -> None:
        with self.lock:
            self.sessions.pop(session.session, None)
            left = len(self.sessions)
        if not self.stopping.is_set():
            self.publish()
        log.info("session %s closed after %d frames, %d in use", session.session, session.frames_done, left)

    def serve(self) -> None:
        self.publish()
        try:
            while not self.stopping.is_set():
                if time.monotonic() - self.last_presence >= process.PRESENCE_INTERVAL:
                    self.publish()
                try:
                    item = self.client.blpop([self.open_key], timeout=1)
                except redis.exceptions.RedisError as exc:
                    log.warning("waiting for Redis: %s", exc)
                    self.stopping.wait(1)
                    continue
                if item is not None:
                    self.open(item[1])
        finally:
            self.stop()

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            threads = list(self.sessions.values())
        for thread in threads:
            thread.join(STOP_TIMEOUT)
        try:
            channel.withdraw_live_worker(self.client, self.name)
            self.client.delete(self.open_key)
        except redis.exceptions.RedisError:
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.live", description="Run one live worker.")
    parser.add_argument("--healthcheck", action="store_true", help="exit 0 if this host's live worker is up")
    args = parser.parse_args(argv)
    settings = Settings()
    if args.healthcheck:
        return 0 if host_is_present(settings.queue_url, channel.WORKER_PREFIX) else 1
    try:
        models = process.start("live", settings)
    except process.StartError as exc:
        return process.fail("live", exc)
    if settings.worker_device == "cpu":
        torch.set_num_threads(1)
    name = process.process_name()
    server = LiveServer(name, models, connect(settings.queue_url), settings)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: server.stopping.set())
    log.info("live worker %s: up to %d sessions", name, settings.live_sessions)
    server.serve()
    log.info("live worker %s stopped", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
