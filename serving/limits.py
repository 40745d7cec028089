"""The ASGI middlewares that bound what `serve` holds, before a request reaches its endpoint: how
many /predict requests are in the server at once (Admission), and how large a body may be
(BodyLimit)."""

import json

from .settings import ServeSettings

RETRY_AFTER_S = 1  # what a 503 asks a client to wait: a batch on a CPU takes well under a second


class BodyTooLarge(Exception):
    """A streamed body passed the limit: the endpoint reading it answers 413."""


class Admission:
    """At most `max_queue` /predict requests in the server at once (reading, decoding, waiting for or
    in the model). One more is answered 503 with Retry-After at once, before its body is read: a
    burst costs the server a little CPU, not memory. `active` is how many are in (GET /health)."""

    def __init__(self, app, settings: ServeSettings):
        self.app, self.limit, self.active = app, settings.max_queue, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/predict":
            return await self.app(scope, receive, send)
        if self.active >= self.limit:
            return await send_json(
                send,
                503,
                {"error": f"server busy: {self.limit} requests in progress (--max-queue); retry in {RETRY_AFTER_S} s"},
                [(b"retry-after", str(RETRY_AFTER_S).encode())],
            )
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


class BodyLimit:
    """Refuse a body over the limit from its Content-Length, before reading it; a streamed body
    raises BodyTooLarge (answered 413 by the endpoint) once it passes the limit."""

    def __init__(self, app, settings: ServeSettings):
        self.app, self.limit, self.settings = app, settings.max_request_bytes, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            status = 413 if declared.isdigit() else 400
            message = (
                f"request larger than {self.settings.max_request_mb:g} MB"
                if status == 413
                else "malformed Content-Length"
            )
            return await send_json(send, status, {"error": message})
        await self.app(scope, _limited(receive, self.limit), send)


def _limited(receive, limit: int):
    """`receive`, raising BodyTooLarge once more than `limit` body bytes have come."""
    received = 0

    async def limited():
        nonlocal received
        message = await receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise BodyTooLarge
        return message

    return limited


async def send_json(send, status: int, body: dict, headers: list = ()):
    """A whole JSON response from a middleware, closing the connection (its body may be unread)."""
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
