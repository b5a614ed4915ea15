"""What a request may cost before the app sees it: body bytes, a place in line, a dropped connection.

``Admission`` is plain ASGI middleware, outermost in the app, so that

- a body over ``max_body`` is refused as soon as its ``Content-Length`` says so, or, streamed without
  one, as soon as the bytes received pass the cap; the rest is never read (the 413 closes the
  connection), so a 300 MB upload costs the server at most ``max_body`` bytes;
- at most ``max_active`` requests to the heavy paths run at once and ``max_queue`` more wait, their
  bodies unread (the server's own flow control holds them back); any more get 503 with
  ``Retry-After`` as soon as their bodies (at most ``max_body``) have been read and dropped, so a
  flood of clients costs a queue slot each, or a read, not memory or model time;
- a body that stops arriving for ``body_timeout`` seconds gets 408 and its place back, so a few idle
  sockets cannot hold every place;
- a client that hangs up mid-upload is one warning line, not a 500 and two tracebacks.

FastAPI's own ``max_body_size`` checks only when the app first reads (after the wait in line) and
answers a bare "Content Too Large", hence this.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

import anyio

from leukoscope.serve.limits import ServeSettings

log = logging.getLogger("leukoscope.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _BodyTooLarge(Exception):
    pass


class _BodyStalled(Exception):
    pass


CLOSE = {"Connection": "close"}


async def reply(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    """A JSON ``{"detail": ...}`` answer; ``headers`` such as ``{"Connection": "close"}`` when the body
    was not read, so the server stops reading it (the client may then see a reset once it has the answer)."""
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Line:
    """``active`` places and a queue of ``queue`` more; anyone beyond that is turned away at once.

    ``retry_after`` estimates when a place frees up from how long recent requests held theirs.
    """

    def __init__(self, active: int, queue: int):
        self.active, self.queue = active, queue
        self.waiting = 0
        self._held_s = 1.0  # running mean of how long a place is held, seconds
        self._places: anyio.Semaphore | None = None  # made inside the server's event loop

    def retry_after(self) -> int:
        return max(1, min(60, math.ceil(self._held_s * (self.waiting + self.active) / self.active)))

    async def enter(self) -> bool:
        """Take a place, waiting in the queue if need be; False (at once) when the queue is full."""
        if self._places is None:
            self._places = anyio.Semaphore(self.active)
        if self._places.value == 0 and self.waiting >= self.queue:
            return False
        self.waiting += 1
        try:
            await self._places.acquire()
        finally:
            self.waiting -= 1
        return True

    def leave(self, held_s: float) -> None:
        assert self._places is not None
        self._held_s = 0.8 * self._held_s + 0.2 * held_s
        self._places.release()


class Admission:
    """ASGI middleware enforcing the body cap and the line for ``heavy`` paths (see the module)."""

    def __init__(self, app: ASGIApp, settings: ServeSettings, heavy: Collection[str]):
        self.app = app
        self.max_body = settings.max_body
        self.body_timeout = settings.body_timeout
        self.heavy = frozenset(heavy)
        self.line = Line(settings.max_active, settings.max_queue)

    def too_large(self) -> str:
        return f"request body exceeds the limit of {self.max_body:,} bytes; send fewer or smaller files"

    def stalled(self) -> str:
        return f"request body stalled: no bytes for {self.body_timeout:g} s; send it again"

    async def _body_part(self, receive: Receive) -> Message:
        """The next message while the body is arriving, or ``_BodyStalled`` after ``body_timeout``."""
        try:
            with anyio.fail_after(self.body_timeout):
                return await receive()
        except TimeoutError:
            raise _BodyStalled from None

    async def _drain(self, receive: Receive) -> None:
        """Read and drop the body: a client still sending when the server hangs up gets a reset,
        and many (asyncio ones among them) then lose the answer they were sent."""
        received = 0
        while True:
            message = await self._body_part(receive)
            if message["type"] != "http.request":
                return
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise _BodyTooLarge
            if not message.get("more_body", False):
                return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            await reply(send, 413, self.too_large(), CLOSE)
            return
        if scope["path"] not in self.heavy:
            await self._run(scope, receive, send, declared)
            return
        if not await self.line.enter():
            try:
                await self._drain(receive)
            except _BodyTooLarge:
                await reply(send, 413, self.too_large(), CLOSE)
                return
            except _BodyStalled:
                await reply(send, 408, self.stalled(), CLOSE)
                return
            wait = self.line.retry_after()
            await reply(send, 503, f"server busy: {self.line.active} requests running and "
                        f"{self.line.queue} waiting; retry in {wait} s", {"Retry-After": str(wait)})
            return
        start = time.monotonic()
        try:
            await self._run(scope, receive, send, declared)
        finally:
            self.line.leave(time.monotonic() - start)

    async def _run(self, scope: Scope, receive: Receive, send: Send, declared: int | None) -> None:
        received = 0
        complete = dropped = started = False

        async def counted_receive() -> Message:
            nonlocal received, complete, dropped
            message = await receive() if complete else await self._body_part(receive)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _BodyTooLarge
                complete = not message.get("more_body", False)
            elif message["type"] == "http.disconnect" and not complete:
                dropped = True
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except _BodyTooLarge:
            if started:
                raise
            await reply(send, 413, self.too_large(), CLOSE)
        except _BodyStalled:
            if started:
                raise
            await reply(send, 408, self.stalled(), CLOSE)
        except Exception:
            if not dropped:
                raise
            client = "{}:{}".format(*scope["client"]) if scope.get("client") else "a client"
            of = f" of {declared:,}" if declared is not None else ""
            log.warning("%s hung up during %s %s after %s bytes of its upload", client, scope["method"],
                        scope["path"], f"{received:,}{of}")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None
