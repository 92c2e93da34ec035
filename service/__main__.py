"""`python -m service`: the API under uvicorn, with the limits that keep slow or many clients from
exhausting it (HOST, PORT and the rest from the environment, as every process here reads them).

- Open files: the soft limit is raised to the hard one (at most MAX_OPEN_FILES), and the server
  takes at most a third of it in connections (MAX_CONNECTIONS at most): each upload may hold its
  socket, its file being written and a probe's pipes. Beyond that uvicorn answers 503 at once,
  rather than the process running out of descriptors and failing every request.
- Keep-alive connections idle for KEEP_ALIVE_SECONDS are closed; a request head is at most
  MAX_HEAD_BYTES and must arrive within REQUEST_HEAD_SECONDS (service/http_protocol.py); bodies
  have their deadlines (service/body_guard.py).
- A WebSocket message may be up to twice the largest live source (service/live_socket.py), so the
  API reads an oversized source and refuses it with its documented close rather than cutting it off.
- On SIGTERM, requests in progress get SHUTDOWN_TIMEOUT_SECONDS to finish, then are cancelled
  (a cancelled upload removes its files), so a stalled client cannot keep the API from stopping.
"""

import argparse
import resource
import sys

import uvicorn

from contract.settings import Settings
from service.http_protocol import HeadDeadlineProtocol
from service.live_socket import MAX_MESSAGE_BYTES

MAX_OPEN_FILES = 65536
FILES_PER_CONNECTION = 3
MAX_HEAD_BYTES = 16 * 1024


def raise_open_files_limit() -> int:
    """The soft RLIMIT_NOFILE raised as far as the hard limit allows; returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    return soft


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description="Run the animate API.")
    parser.add_argument("--no-access-log", action="store_true", help="no line per request")
    args = parser.parse_args(argv)
    settings = Settings()
    open_files = raise_open_files_limit()
    HeadDeadlineProtocol.head_seconds = settings.request_head_seconds
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        http=HeadDeadlineProtocol,
        limit_concurrency=min(settings.max_connections, open_files // FILES_PER_CONNECTION),
        timeout_keep_alive=settings.keep_alive_seconds,
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        ws_max_size=MAX_MESSAGE_BYTES,
        access_log=not args.no_access_log,
        server_header=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
