"""Request bodies that arrive too slowly, or are left unread, must not hold a connection.

A client may send headers and part of a body, then nothing, or a byte now and then: each such
request would keep a connection, a task and an open upload file for as long as it liked. So every
wait for the next part of a request's body is bounded by UPLOAD_IDLE_SECONDS since the previous
one and by UPLOAD_DEADLINE_SECONDS since the request arrived; past either, `receive` raises
UploadTimeout, which is answered 408 `upload_timeout` (service/errors.py).

An answer given before its request's body was read to the end (408, 413, 401, 429...) also asks the
server to close the connection: otherwise the rest of the body would keep arriving, to be read and
dropped, for as long as the client cared to send it.
"""

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class UploadTimeout(Exception):
    """The request's body did not arrive in time."""


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"", b"0")):
            return True
    return False


class BodyGuard:
    """ASGI middleware: deadlines on reading a request's body; `Connection: close` when left unread."""

    def __init__(self, app: ASGIApp, deadline: float, idle: float):
        self.app = app
        self.deadline = deadline
        self.idle = idle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline
        body_done = not _has_body(scope)

        async def guarded_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            limit = min(loop.time() + self.idle, deadline)
            try:
                async with asyncio.timeout_at(limit):
                    message = await receive()
            except TimeoutError:
                reason = "the request body took too long" if limit >= deadline else "the request body stalled"
                raise UploadTimeout(reason) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not body_done:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, guarded_receive, guarded_send)
