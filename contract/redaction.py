"""What must not leave a process in its text: secrets in log lines, server paths in clients' errors.

Secrets travel where the code cannot always keep them out of a line: a browser sends its API key
in the WebSocket URL (`?api_key=`), and uvicorn logs every request line whole; an exception may
quote a URL or a header. `redact_secrets` replaces the value of every secret-named query parameter,
of Bearer and Basic credentials, of secret-named headers and of webhook secrets with `[redacted]`.

A job's files have server paths (`/srv/data/jobs/<id>/source.jpeg`) that libraries quote in their
errors; `without_paths` calls an upload by its form field instead, and hides any other absolute path.
"""

import re

REDACTED = "[redacted]"
SECRET_NAMES = (
    r"api[_-]?key|apikey|key|token|access[_-]?token|auth|secret|password|passwd|signature|sig"
    r"|x-amz-signature|x-amz-credential|x-amz-security-token"
)
_QUERY = re.compile(rf"(?i)([?&;](?:{SECRET_NAMES})=)[^&;\s\"'#]+")
_CREDENTIALS = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]+")
_HEADER = re.compile(
    r"(?i)\b(x-api-key|authorization|webhook-signature|cookie)(\"?'?\s*[:=]\s*\"?'?)[^\s\"',;]+"
)
_WEBHOOK_SECRET = re.compile(r"whsec_[A-Za-z0-9+/=]+")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/[^\s'\"]+")


def redact_secrets(text: str) -> str:
    text = _QUERY.sub(rf"\1{REDACTED}", text)
    text = _CREDENTIALS.sub(rf"\1\2{REDACTED}", text)
    text = _HEADER.sub(rf"\1\2{REDACTED}", text)
    return _WEBHOOK_SECRET.sub(f"whsec_{REDACTED}", text)


def without_paths(text: str, fields: tuple[str, ...]) -> str:
    """`text` with an upload's file (`<field>.<ext>` as the store names it, with or without its
    folder) called by its field, and every other absolute path replaced by `<path>`."""
    for field in fields:
        text = re.sub(rf"(?:/[^\s'\"]*/)?(?<![\w.-]){re.escape(field)}\.[A-Za-z0-9]+(?![\w.])", field, text)
    return _ABSOLUTE_PATH.sub("<path>", text)
