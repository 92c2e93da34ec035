"""Structured logs: one JSON object a line on stderr, for the API, the worker and the libraries they use.

Each line has `time`, `level`, `logger`, `process` (api or worker) and `message`, plus `job_id`
when the line is about a job: given as `extra={"job_id": ...}`, set for the current job in
`current_job_id`, or found in the path of an access log line. Nothing else of a request is logged:
no headers (so no API key), no form content, no webhook signature; and every line, uvicorn's and
the libraries' included, goes through `RedactSecrets` (contract/redaction.py), since a key can come
in a URL (the web page's WebSocket) and a library may quote a URL or a header in an error.
LOG_FORMAT=text gives plain lines.
"""

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime

from contract.redaction import redact_secrets

current_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_job_id", default=None)
JOB_ID_IN_PATH = re.compile(r"/jobs/([0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12})\b")
STANDARD_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message", "taskName"}
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def _job_id(record: logging.LogRecord) -> str | None:
    found = getattr(record, "job_id", None) or current_job_id.get()
    if found is None and record.name == "uvicorn.access" and isinstance(record.args, tuple):
        match = JOB_ID_IN_PATH.search(str(record.args[2]) if len(record.args) > 2 else "")
        found = match.group(1) if match else None
    return found


def _redacted(value: object) -> object:
    return redact_secrets(value) if isinstance(value, str) else value


class RedactSecrets(logging.Filter):
    """Secrets out of a record before any handler formats it: message, arguments, extra fields and
    exception text. Arguments stay arguments, so an access line still yields its job id."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _redacted(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {name: _redacted(arg) for name, arg in record.args.items()}
        for name, value in list(vars(record).items()):
            if name not in STANDARD_FIELDS and isinstance(value, str):
                setattr(record, name, redact_secrets(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_secrets(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str):
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": self.process,
            "message": record.getMessage(),
        }
        job_id = _job_id(record)
        if job_id:
            entry["job_id"] = job_id
        for name, value in vars(record).items():
            if name not in STANDARD_FIELDS and name not in entry and name != "job_id":
                entry[name] = value if isinstance(value, str | int | float | bool | None) else str(value)
        if record.exc_text or record.exc_info:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self, process: str):
        super().__init__(f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        job_id = _job_id(record)
        return f"{line} [job {job_id}]" if job_id and job_id not in line else line


def configure_logging(process: str, level: str = "INFO", fmt: str = "json") -> None:
    """Route every logger, uvicorn's and RQ's included, to one stderr handler in `fmt`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process) if fmt == "json" else TextFormatter(process))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
