"""Reading an uploaded video's container in a child process with limits: what one check may cost.

FFmpeg parsing a client's bytes is the riskiest work the API does, so it runs in a process of its
own, forked from a server process that loaded PyAV once (multiprocessing's forkserver: a fork costs
milliseconds, not an interpreter start). The child may allocate PROBE_MEMORY_MB beyond what it
starts with (an address-space limit), use PROBE_TIMEOUT_SECONDS of CPU and write no file; it is
killed when it has not answered within PROBE_TIMEOUT_SECONDS. A probe that crashes, runs out of
memory or out of time fails its upload, never the API. (How many run at once is the submission's
business: service/submission.py checks at most PROBE_CONCURRENCY uploads at a time.)
"""

import multiprocessing
import os
import resource
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from pathlib import Path

from contract.container import ContainerFacts, UnreadableVideo, read_container

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(["contract.container"])


class ProbeFailed(Exception):
    """The probe crashed, ran out of memory or of time: the file is not read."""


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _probe_in_child(
    conn: Connection, path: str, demuxer: str, max_packets: int, memory_bytes: int, cpu_seconds: int
) -> None:
    limit = _address_space_bytes() + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    try:
        conn.send(("facts", read_container(Path(path), demuxer, max_packets)))
    except UnreadableVideo as exc:
        conn.send(("unreadable", str(exc)))
    except MemoryError:
        conn.send(("failed", f"it needs more than {memory_bytes >> 20} MB to read"))


class Prober:
    """Runs read_container in limited child processes."""

    def __init__(self, timeout: float, memory_mb: float):
        self.timeout = timeout
        self.memory_bytes = int(memory_mb * 1024 * 1024)

    def warm_up(self) -> None:
        """Start the fork server now rather than on the first upload."""
        forkserver.ensure_running()

    def read(self, path: Path, demuxer: str, max_packets: int) -> ContainerFacts:
        """The facts of `path`; UnreadableVideo or ProbeFailed otherwise."""
        receiver, sender = _context.Pipe(duplex=False)
        cpu_seconds = max(1, int(self.timeout))
        process = _context.Process(
            target=_probe_in_child,
            args=(sender, str(path), demuxer, max_packets, self.memory_bytes, cpu_seconds),
            daemon=True,
        )
        kind, value = "failed", f"it could not be read within {self.timeout:g} s"
        try:
            process.start()
            sender.close()
            if receiver.poll(self.timeout):
                kind, value = receiver.recv()
        except EOFError:
            kind, value = "failed", "its reader stopped"
        finally:
            if process.is_alive():
                process.kill()
            process.join()
            receiver.close()
        if kind == "unreadable":
            raise UnreadableVideo(value)
        if kind == "failed":
            raise ProbeFailed(value)
        return value
