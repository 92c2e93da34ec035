"""`python -m worker.live`: a live worker, animating webcam frames for up to LIVE_SESSIONS clients.

Why a process of its own rather than a thread in the RQ worker (`make serve` starts both):
- Latency. A queued render keeps the RQ worker busy for minutes with decode and encode threads, big
  batches and torch's intra-op pool sized for throughput. A live frame must be back within tens of
  milliseconds; sharing the interpreter (GIL) and the thread pool with a render would put every live
  frame behind a batch. Here one inference thread (worker/live_batcher.py) renders every session's
  newest frame, batched, with all of torch's threads: one session gets every core, several share
  them turn by turn, and the OS shares the cores between this process and a render.
- Admission. At start-up the worker times a frame of each model (in the PRECISION it renders, bf16
  where the CPU has it natively) and admits a session only while the open sessions' frames and the
  new one's still fit in one frame interval at LIVE_TARGET_FPS; a session it cannot serve at that
  rate is refused with the reason (503 from the API). An admitted session is held to that rate.
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
from engine.hardware import default_precision
from worker import process
from worker.catalog import LoadedModel
from worker.live_batcher import LiveBatcher, seconds_per_frame
from worker.live_session import LiveSession

STOP_TIMEOUT = 10.0
log = logging.getLogger("worker.live")


class LiveServer:
    """Takes session requests from this worker's open list and runs each admitted session in a thread."""

    def __init__(self, name: str, models: dict[str, LoadedModel], client: redis.Redis, settings: Settings):
        self.name = name
        self.models = models
        self.client = client
        self.device = settings.worker_device
        self.precision = settings.precision or default_precision(self.device)
        self.idle_seconds = settings.live_idle_seconds
        self.target_fps = settings.live_target_fps
        self.frame_seconds = self.calibrate()
        cheapest = min(self.frame_seconds.values())
        self.session_limit = settings.live_sessions
        # what presence advertises: the sessions of the cheapest model that fit at the target rate
        self.capacity = min(settings.live_sessions, int(1 / (self.target_fps * cheapest)))
        self.batcher = LiveBatcher()
        self.stopping = threading.Event()
        self.sessions: dict[str, LiveSession] = {}
        self.lock = threading.Lock()
        self.last_presence = 0.0

    def calibrate(self) -> dict[str, float]:
        """Seconds per live frame of each model, with the intra-op thread count that renders fastest.

        All cores, unless one thread is faster: on a machine whose cores are busy with other work, a
        pool whose threads wait for each other at every operation can be many times slower.
        """
        counts = sorted({1, torch.get_num_threads()})
        timings = {}
        for count in counts:
            torch.set_num_threads(count)
            timings[count] = {
                name: seconds_per_frame(m.animator, self.precision) for name, m in self.models.items()
            }
        best = min(counts, key=lambda count: sum(timings[count].values()))
        torch.set_num_threads(best)
        for model, seconds in timings[best].items():
            log.info(
                "model %r: %.1f ms a live frame (%s, %d threads)", model, seconds * 1000, self.precision, best
            )
        return timings[best]

    @property
    def open_key(self) -> str:
        return channel.OPEN_PREFIX + self.name

    def presence(self) -> dict:
        with self.lock:
            open_sessions = len(self.sessions)
        models = [
            m.describe(self.precision, round(self.frame_seconds[m.name] * 1000, 1)).model_dump(mode="json")
            for m in self.models.values()
        ]
        return {
            "name": self.name,
            "device": self.device,
            "precision": self.precision,
            "target_fps": self.target_fps,
            "models": models,
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
            refusal = self.refusal(model)
            if refusal is None:
                thread = LiveSession(
                    session,
                    self.models[model],
                    self.client,
                    self.stopping,
                    self.ended,
                    self.idle_seconds,
                    self.batcher,
                    self.precision,
                    1 / self.target_fps,
                )
                self.sessions[session] = thread
        if refusal is not None:
            self.answer(keys, channel.ERROR, refusal)
            return
        self.answer(keys, channel.ACCEPTED, {"worker": self.name})
        thread.start()
        self.publish()
        log.info("session %s opened (%s), %d of %d in use", session, model, len(self.sessions), self.capacity)

    def refusal(self, model: str) -> dict | None:
        """Why a session of `model` cannot be admitted now (an error payload), or None; under the lock.

        A session is admitted while the open sessions' frames and its own fit in one frame interval
        at the target rate: the batcher renders them turn by turn.
        """
        if len(self.sessions) >= self.session_limit:
            message = f"live worker {self.name} has all its {self.session_limit} sessions in use"
            return {"code": "live_full", "message": message}
        interval = 1 / self.target_fps
        busy = sum(self.frame_seconds[s.loaded.name] for s in self.sessions.values())
        cost = self.frame_seconds[model]
        if busy + cost <= interval:
            return None
        rate = f"{self.target_fps:g} fps (a frame every {interval * 1000:.0f} ms)"
        if not self.sessions:
            message = (
                f"this machine cannot serve model {model!r} live at {rate}: a frame takes "
                f"{cost * 1000:.0f} ms here ({self.precision}, {self.device}, "
                f"{self.models[model].animator.runtime})"
            )
        else:
            message = (
                f"live worker {self.name} cannot serve another session of model {model!r} at {rate}: "
                f"its {len(self.sessions)} open session(s) take {busy * 1000:.0f} ms of each interval "
                f"and a frame of this model {cost * 1000:.0f} ms"
            )
        return {"code": "live_too_slow", "message": message}

    def ended(self, session: LiveSession) -> None:
        with self.lock:
            self.sessions.pop(session.session, None)
            left = len(self.sessions)
        if not self.stopping.is_set():
            self.publish()
        log.info(
            "session %s closed after %d frames (%d stale ones skipped), %d in use",
            session.session,
            session.frames_done,
            session.frames_dropped,
            left,
        )

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
        self.batcher.stop()
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
        models = process.start("live", settings, batch_size=1)
    except process.StartError as exc:
        return process.fail("live", exc)
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
