"""`animate submit`: the service's client flow from the command line, over HTTP only.

Upload (streamed from disk), poll the job with a progress bar, download the MP4 next to OUT and
rename it into place, so OUT appears only when complete. Ctrl-C while waiting cancels the job.
Exit status: 0 done, 1 the job or the server failed, 2 bad input (ours or as the server judged it),
130 interrupted.
"""

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from contract.option_flags import add_motion_arguments, motion_values

if TYPE_CHECKING:  # imported where a request is made: `animate render` does not pay for httpx
    import httpx

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
POLL_INTERVAL = 0.5
API_KEY_VARIABLE = "ANIMATE_API_KEY"


class SubmitError(Exception):
    def __init__(self, message: str, status: int = EXIT_FAILED):
        super().__init__(message)
        self.status = status


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, help="the service's base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--source", required=True, help="source image (PNG, JPEG, WebP)")
    parser.add_argument("--driving", required=True, help="driving video (MP4, MOV, WebM, MKV)")
    parser.add_argument("--out", required=True, help="where to write the result (MP4 unless --format)")
    parser.add_argument("--model", help="a model the service has loaded (default: the service's)")
    parser.add_argument("--format", choices=["mp4", "webm", "gif", "webp"])
    parser.add_argument("--loop", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--driving-start", metavar="N|best")
    parser.add_argument("--audio", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--crop", metavar="none|auto|face|body|X,Y,W,H")
    parser.add_argument("--paste-back", action=argparse.BooleanOptionalAction, default=None)
    add_motion_arguments(parser)
    parser.add_argument(
        "--timeout", type=float, default=3600, help="seconds to wait for the job (default 3600)"
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_VARIABLE),
        help=f"the service's API key, when it needs one (default: ${API_KEY_VARIABLE})",
    )


class ProgressLine:
    """A one-line bar on a terminal; elsewhere a plain line at each tenth of the way."""

    def __init__(self, stream: TextIO = sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()
        self.last_tenth = -1
        self.drawn = False

    def update(self, job: dict[str, Any]) -> None:
        progress = job.get("progress") or {}
        percent = float(progress.get("percent") or 0)  # of the whole job; it never goes down
        done, total = progress.get("frames_done", 0), progress.get("frames_total") or "?"
        eta = job.get("eta_seconds")
        stage = progress.get("stage") or job["status"]  # queued, analysing, rendering, encoding
        text = f"{stage:<9} {percent:5.1f}%  {done}/{total} frames"
        if eta is not None:
            text += f"  ETA {eta:.0f}s"
        if self.tty:
            filled = int(30 * percent / 100)
            self.stream.write(f"\r[{'#' * filled}{'-' * (30 - filled)}] {text}\x1b[K")
            self.drawn = True
        elif int(percent // 10) != self.last_tenth:
            self.last_tenth = int(percent // 10)
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _error_of(response: "httpx.Response") -> str:
    try:
        error = response.json()["error"]
        return f"{error['message']} ({error['code']})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


def form_fields(args: argparse.Namespace) -> dict[str, str]:
    """The options the user gave, as the API's form fields; the rest is left to the service."""
    values = {
        "model": args.model,
        "driving_start": args.driving_start,
        "audio": args.audio,
        "crop": args.crop,
        "paste_back": args.paste_back,
        "format": args.format,
        "loop": args.loop,
        **motion_values(args),
    }
    return {
        name: str(value).lower() if isinstance(value, bool) else value
        for name, value in values.items()
        if value is not None
    }


def _post(client: "httpx.Client", source: Path, driving: Path, fields: dict[str, str]) -> dict[str, Any]:
    with source.open("rb") as image, driving.open("rb") as video:
        files = {"source": (source.name, image), "driving": (driving.name, video)}
        response = client.post("/animate", data=fields, files=files)
    if response.status_code != 202:
        status = (
            EXIT_BAD_INPUT
            if 400 <= response.status_code < 500 and response.status_code != 429
            else EXIT_FAILED
        )
        raise SubmitError(f"the server refused the job: {_error_of(response)}", status)
    return response.json()


def _wait(
    client: "httpx.Client", job: dict[str, Any], timeout: float, on_update: Callable, poll_interval: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while job["status"] in ("queued", "started"):
        if time.monotonic() > deadline:
            raise SubmitError(f"job {job['id']} did not finish within {timeout:g} s")
        time.sleep(poll_interval)
        response = client.get(f"/jobs/{job['id']}")
        if response.status_code == 503:
            continue  # the queue is briefly unreachable; the job is still there
        if response.status_code != 200:
            raise SubmitError(f"lost job {job['id']}: {_error_of(response)}")
        job = response.json()
        on_update(job)
    return job


def _download(client: "httpx.Client", job: dict[str, Any], out: Path) -> None:
    partial = out.with_name(f".{out.name}.download")
    try:
        # With an object store the API may redirect to a presigned URL; httpx drops the Authorization
        # header when a redirect leaves the API's origin, so the key is never sent to the store.
        with client.stream("GET", job["result_url"], follow_redirects=True) as response:
            if response.status_code != 200:
                response.read()
                raise SubmitError(f"cannot download the result: {_error_of(response)}")
            with partial.open("wb") as file:
                for chunk in response.iter_bytes(1 << 20):
                    file.write(chunk)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)


def submit_job(
    server: str,
    source: Path,
    driving: Path,
    out: Path,
    fields: dict[str, str],
    timeout: float = 3600,
    progress: ProgressLine | None = None,
    poll_interval: float = POLL_INTERVAL,
    api_key: str | None = None,
) -> dict[str, Any]:
    """The whole client flow; returns the finished job resource. SubmitError says what went wrong."""
    import httpx

    for role, path in (("source", source), ("driving", driving)):
        if not path.is_file():
            raise SubmitError(f"--{role}: no such file: {path}", EXIT_BAD_INPUT)
    if not out.parent.is_dir():
        raise SubmitError(f"output folder does not exist: {out.parent}", EXIT_BAD_INPUT)
    progress = progress or ProgressLine()
    timeouts = httpx.Timeout(30.0, connect=10.0)
    try:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        with httpx.Client(base_url=server, timeout=timeouts, headers=headers) as client:
            job = _post(client, source, driving, fields)
            print(f"job {job['id']} queued on {server}", file=sys.stderr)
            progress.update(job)
            try:
                job = _wait(client, job, timeout, progress.update, poll_interval)
            except KeyboardInterrupt:
                with contextlib.suppress(httpx.HTTPError):
                    client.delete(f"/jobs/{job['id']}")
                raise SubmitError(f"interrupted: job {job['id']} canceled", EXIT_INTERRUPTED) from None
            finally:
                progress.close()
            if job["status"] != "succeeded":
                error = job.get("error") or {}
                detail = f": {error.get('message')} ({error.get('code')})" if error else ""
                raise SubmitError(f"job {job['id']} {job['status']}{detail}")
            _download(client, job, out)
    except httpx.HTTPError as exc:
        raise SubmitError(f"cannot talk to {server}: {exc}") from None
    return job


def submit(args: argparse.Namespace) -> int:
    """The `animate submit` command."""
    out = Path(args.out)
    try:
        job = submit_job(
            args.server,
            Path(args.source),
            Path(args.driving),
            out,
            form_fields(args),
            args.timeout,
            api_key=args.api_key,
        )
    except SubmitError as exc:
        print(f"animate: error: {exc}", file=sys.stderr)
        return exc.status
    result = job.get("result") or {}
    timings = job.get("timings") or {}
    print(
        f"wrote {out} ({result.get('frames')} frames, {result.get('width')}x{result.get('height')}, "
        f"{result.get('fps', 0):g} fps, audio {'on' if result.get('audio') else 'off'}); "
        f"queued {timings.get('queue_wait') or 0:.1f}s, rendered in {timings.get('render') or 0:.1f}s",
        file=sys.stderr,
    )
    return 0
