"""Checking an upload in a child process with limits: what one check may cost.

FFmpeg and Pillow parsing a client's bytes is the riskiest work the API does, so it runs in a
process of its own, forked from a server process that loaded PyAV and Pillow once
(multiprocessing's forkserver: a fork costs milliseconds, not an interpreter start). The child may
allocate PROBE_MEMORY_MB beyond what it starts with (an address-space limit), use
PROBE_TIMEOUT_SECONDS of CPU and write no file; it is killed when it has not answered within
PROBE_TIMEOUT_SECONDS, or as soon as the check is no longer wanted (`cancel`: a live session that
ended), so no CPU is spent on it afterwards. A check that crashes, runs out of memory or out of
time fails its upload, never the API. Videos are described (contract/container.py: the first frame
decoded by a bounded decoder), images judged by their decoding cost and decoded whole
(contract/images.py). How many run at once, and whose, is service/check_slots.py's business.

A child imports what it needs to be forked and to run its check, no more (no web framework: the
fork server loads the readers once, and a check costs milliseconds, not an import).
"""

import multiprocessing
import os
import resource
import threading
import time
from collections.abc import Callable
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from pathlib import Path

from contract.container import ContainerFacts, FrameTooLarge, UnreadableVideo, read_container
from contract.images import ImageFacts, ImageRefused, check_image

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(["contract.container", "contract.images"])
POLL_SECONDS = 0.05  # how often a waiting check looks at its cancel flag


class ProbeFailed(Exception):
    """The check crashed, ran out of memory or of time, or was canceled: the file is not judged."""


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _answer(check: Callable, args: tuple, memory_bytes: int) -> tuple[str, object]:
    """What the child sends back: plain tuples, as exceptions do not all survive pickling."""
    try:
        return "facts", check(*args)
    except FrameTooLarge as exc:
        return "too_large", (exc.width, exc.height, exc.max_pixels)
    except UnreadableVideo as exc:
        return "unreadable", str(exc)
    except ImageRefused as exc:
        return "refused", (exc.code, exc.message)
    except MemoryError:
        return "failed", f"it needs more than {memory_bytes >> 20} MB to read"


def _in_child(conn: Connection, check: Callable, args: tuple, memory_bytes: int, cpu_seconds: int) -> None:
    limit = _address_space_bytes() + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    conn.send(_answer(check, args, memory_bytes))


class Prober:
    """Runs read_container and check_image in limited child processes."""

    def __init__(self, timeout: float, memory_mb: float):
        self.timeout = timeout
        self.memory_bytes = int(memory_mb * 1024 * 1024)

    def warm_up(self) -> None:
        """Start the fork server now rather than on the first upload."""
        forkserver.ensure_running()

    def read(
        self,
        path: Path,
        demuxer: str,
        max_packets: int,
        max_pixels: int | None = None,
        cancel: threading.Event | None = None,
    ) -> ContainerFacts:
        """The facts of video `path`; UnreadableVideo, FrameTooLarge or ProbeFailed otherwise."""
        return self._run(read_container, (path, demuxer, max_packets, max_pixels), cancel)

    def image(
        self, path: Path, kind: str, max_pixels: int, name: str, cancel: threading.Event | None = None
    ) -> ImageFacts:
        """The facts of image `path`; ImageRefused or ProbeFailed otherwise."""
        return self._run(check_image, (path, kind, max_pixels, name), cancel)

    def _run(self, check: Callable, args: tuple, cancel: threading.Event | None):
        receiver, sender = _context.Pipe(duplex=False)
        cpu_seconds = max(1, int(self.timeout))
        process = _context.Process(
            target=_in_child, args=(sender, check, args, self.memory_bytes, cpu_seconds), daemon=True
        )
        kind, value = "failed", f"it could not be read within {self.timeout:g} s"
        try:
            process.start()
            sender.close()
            if self._answered(receiver, cancel):
                kind, value = receiver.recv()
            elif cancel is not None and cancel.is_set():
                value = "it was no longer wanted"
        except EOFError:
            kind, value = "failed", "its reader stopped"
        finally:
            if process.is_alive():
                process.kill()
            process.join()
            receiver.close()
        return self._result(kind, value)

    def _answered(self, receiver: Connection, cancel: threading.Event | None) -> bool:
        """Whether the child answered within the timeout, waiting no longer once `cancel` is set."""
        deadline = time.monotonic() + self.timeout
        while (left := deadline - time.monotonic()) > 0:
            if receiver.poll(min(left, POLL_SECONDS) if cancel is not None else left):
                return True
            if cancel is not None and cancel.is_set():
                return False
        return False

    @staticmethod
    def _result(kind: str, value):
        if kind == "too_large":
            raise FrameTooLarge(*value)
        if kind == "unreadable":
            raise UnreadableVideo(value)
        if kind == "refused":
            raise ImageRefused(*value)
        if kind == "failed":
            raise ProbeFailed(value)
        return value
