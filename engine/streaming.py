"""The pipeline's plumbing: frames batched, decoded ahead in a thread, consumed behind in another,
and the time each stage spends blocked."""

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np


class StageTimer:
    """Accumulates the wall time spent blocked in one pipeline stage."""

    def __init__(self):
        self.seconds = 0.0

    @contextlib.contextmanager
    def timed(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start


def prefetch(batches: Iterator[np.ndarray], depth: int = 2) -> Iterator[np.ndarray]:
    """Run a batch iterator in a thread, `depth` batches ahead; errors re-raised in the caller."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        slots.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(done)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            slots.put(exc)

    thread = threading.Thread(target=produce, name="decode", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                slots.get_nowait()
        thread.join(timeout=5)


def batched(frames: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


class BackgroundWriter:
    """Runs `consume` on each batch in a thread, so paste-back and encoding overlap the next batch's
    inference; its errors are raised by put() or finish()."""

    def __init__(self, consume: Callable[[object], None]):
        self.consume = consume
        self.slots: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="encode", daemon=True)
        self.thread.start()

    def _run(self):
        while (batch := self.slots.get()) is not None:
            if self.error is not None:
                continue
            try:
                self.consume(batch)
            except BaseException as exc:  # reported by put() or finish()
                self.error = exc

    def put(self, batch: object) -> None:
        if self.error is not None:
            raise self.error
        self.slots.put(batch)

    def finish(self) -> None:
        self.slots.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        self.slots.put(None)
        self.thread.join(timeout=10)
