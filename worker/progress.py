"""A one-line terminal progress bar (frames, fps, ETA; or any count), silent when stderr is not a terminal."""

import sys
import time
from typing import TextIO


class ProgressBar:
    def __init__(
        self, label: str, stream: TextIO | None = None, min_interval: float = 0.2, unit: str = "frames"
    ):
        self.label = label
        self.unit = unit  # what is counted; the rate is shown for frames only
        self.stream = stream or sys.stderr  # read when built: a default bound at import goes stale
        self.enabled = self.stream.isatty()
        self.min_interval = min_interval
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int, stage: str | None = None) -> None:
        """A new `stage` (e.g. "analysing", then "rendering") relabels the bar and restarts its clock."""
        now = time.monotonic()
        if stage is not None and stage != self.label:
            if self.enabled and self.last:
                self.stream.write("\n")
            self.label, self.started, self.last = stage, now, 0.0
        if not self.enabled or (now - self.last < self.min_interval and done < total):
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        fps = done / elapsed
        eta = (total - done) / fps if fps > 0 else 0.0
        width = 30
        filled = int(width * done / total) if total else 0
        bar = "#" * filled + "-" * (width - filled)
        rate = f"  {fps:5.1f} fps" if self.unit == "frames" else ""
        self.stream.write(f"\r{self.label} [{bar}] {done}/{total} {self.unit}{rate}  ETA {eta:5.1f}s")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
