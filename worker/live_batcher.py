"""One inference thread for all of a live worker's sessions: each session's newest frame, batched.

torch's intra-op thread count is process-wide, so sessions rendering in their own threads would
either each use every core (and fight over them) or one core each (and leave cores idle when one
session runs). Here session threads only decode, encode and talk to Redis; they hand their frame to
this batcher and wait. The batcher takes whatever frames are waiting, one per session since each
session waits for its answer, groups them by model and renders each group as one batch with all
of torch's threads. One session gets the whole machine; several share it turn by turn.

It also measures, once per model at start-up, how long a frame takes, so the live worker admits
only as many sessions as it can serve at the target frame rate (worker/live.py).
"""

import queue
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.animator import Animator
from engine.families.adapter import SourceState
from engine.frames import to_frames, to_tensor

CALIBRATION_FRAMES = 3
WAIT_TICK = 1.0  # seconds


@dataclass
class _Request:
    animator: Animator
    state: SourceState
    frame: torch.Tensor  # (1, 3, H, W) in [0, 1]
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None  # (H, W, 3) uint8
    error: BaseException | None = None


class LiveBatcher:
    """The inference thread; session threads call `render` and wait for their frame."""

    def __init__(self):
        self._requests: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="live-batcher", daemon=True)
        self._thread.start()

    def render(
        self,
        animator: Animator,
        state: SourceState,
        frame: np.ndarray,
        while_waiting: Callable[[], None] | None = None,
    ) -> np.ndarray:
        """Animate one (H, W, 3) uint8 driving frame for `state`; blocks until it is done, calling
        `while_waiting` every WAIT_TICK seconds meanwhile (a session keeps its leases alive)."""
        request = _Request(animator, state, to_tensor(frame[None], animator.device))
        self._requests.put(request)
        while not request.done.wait(WAIT_TICK):
            if while_waiting is not None:
                while_waiting()
        if request.error is not None:
            raise request.error
        return request.result

    def stop(self) -> None:
        self._requests.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while (first := self._requests.get()) is not None:
            batch = [first]
            stop = False
            while True:
                try:
                    item = self._requests.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            for group in _by_model(batch):
                self._render_group(group)
            if stop:
                return

    @staticmethod
    @torch.inference_mode()
    def _render_group(group: list[_Request]) -> None:
        animator = group[0].animator
        try:
            frames = torch.cat([request.frame for request in group])
            animated = to_frames(animator.animate_sessions([request.state for request in group], frames))
            for request, image in zip(group, animated, strict=True):
                request.result = image
        except Exception as exc:  # each waiting session reports it and ends
            for request in group:
                request.error = exc
        finally:
            for request in group:
                request.done.set()


def _by_model(requests: list[_Request]) -> list[list[_Request]]:
    """The requests that can share a batch: same model, same precision and options."""
    groups: dict[tuple[int, str], list[_Request]] = {}
    for request in requests:
        groups.setdefault((id(request.animator), request.state.batch_key), []).append(request)
    return list(groups.values())


@torch.inference_mode()
def seconds_per_frame(animator: Animator, precision: str) -> float:
    """Median time of one live frame (batch of one, after a warm-up) for a random source and frames."""
    h, w = animator.model.frame_shape
    rng = np.random.default_rng(0)
    source = to_tensor(rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8), animator.device)
    state = animator.prepare_source(source, precision=precision)
    times = []
    for _ in range(CALIBRATION_FRAMES + 1):
        frame = to_tensor(rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8), animator.device)
        start = time.perf_counter()
        to_frames(animator.animate_batch(state, frame))
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])
