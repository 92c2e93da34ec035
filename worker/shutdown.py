"""How a render worker stops: within WORKER_STOP_GRACE seconds of SIGTERM, never failing or losing
the job it holds.

On the first SIGTERM (or SIGINT) the worker takes no new job. The job it is rendering goes on and
ends as it would have, if it ends before the hand-back time: the grace less HAND_BACK_SECONDS (at
most half the grace), kept for a frame batch and the hand-back itself. Past it, the render stops at
its next frame batch and the job goes back to the front of the queue as it was, neither failed nor
counted as a retry, for another worker; then the process exits 0. A second signal hands the job back
at once. If the process is still there when the grace has run out (a render stuck outside its frame
loop), it exits with status 1 and its job is found lost like a killed worker's (contract/maintenance.py).

Orchestrators give a stopping process a time before they kill it (Kubernetes'
terminationGracePeriodSeconds, compose's stop_grace_period, `make serve`'s 30 s): WORKER_STOP_GRACE
belongs a little below it, and the Helm chart derives one from the other.
"""

import logging
import os
import threading
import time

HAND_BACK_SECONDS = 10.0  # kept at the end of the grace for a frame batch and the hand-back
log = logging.getLogger("worker")


class StopRequest:
    """The worker's shutdown state, set from signal handlers and read between frame batches."""

    def __init__(self, grace: float):
        self.grace = grace
        self.requested = threading.Event()
        self.hand_back_at: float | None = None  # time.monotonic() past which the job is handed back
        self.watchdog: threading.Timer | None = None

    def request(self) -> None:
        """The first call starts the grace; a second hands the current job back at once."""
        now = time.monotonic()
        if self.requested.is_set():
            self.hand_back_at = now
            return
        self.hand_back_at = now + self.grace - min(HAND_BACK_SECONDS, self.grace / 2)
        self.requested.set()
        self.watchdog = threading.Timer(self.grace, self._overrun)
        self.watchdog.daemon = True
        self.watchdog.start()
        log.info("stopping: no new job; the current one has %.0f s to finish", self.grace)

    def must_hand_back(self) -> bool:
        return self.hand_back_at is not None and time.monotonic() >= self.hand_back_at

    def _overrun(self) -> None:
        log.error("not stopped %.0f s after the stop request (WORKER_STOP_GRACE): exiting now", self.grace)
        logging.shutdown()
        os._exit(1)
