"""ASGI middleware (FastAPI, Starlette) that makes unsafe HTTP methods
idempotent with an ``Idempotency-Key`` header, backed by an Idem server.

    app = FastAPI()
    app.add_middleware(IdempotencyMiddleware, target="idem:50051",
                       namespace="orders")

For POST, PUT and PATCH requests carrying the header:
  * the first request runs; its full response (status, headers, body) is
    stored, and every retry with the same key gets it back, with
    ``Idempotent-Replayed: true``;
  * a retry while the first is still running gets 409 (or waits for it, with
    ``wait=SECONDS``);
  * the same key with a different request (method, path or body) gets 422;
  * a response with a 5xx status is not stored: the key is released so that
    a retry runs again (``release_on_5xx=False`` stores it like any other);
  * an exception in the app releases the key and propagates.
A request with more than one key (repeated headers, or commas: keys may not
contain them) gets 400. Keys live per namespace; ``key_func(scope, key)``
scopes them, e.g. per authenticated user, so that one caller can never get
another's stored response by reusing its key.
Requests without the header pass through untouched, unless ``require_key``
is set: then they get 400. Other methods always pass through. A request body
over ``max_body_bytes`` (1 MiB) gets 413: it is held in memory. Responses
are buffered whole before they are sent (they must be stored first); one
larger than the server's --max-body-bytes cannot be stored, and the caller
then gets 503 while the key stays in progress until its lease lapses.
"""

import asyncio
import concurrent.futures
import json
from typing import Callable, Iterable, List, Optional, Tuple

import grpc

from idem.client import (ACQUIRED, COMPLETED, IN_PROGRESS, IdemClient,
                         Result)
from idem.errors import IdemError
from idem.fingerprint import fingerprint_parts

_HEADERS_KEY = "http-headers"  # Result metadata: the response headers, JSON.
_NOT_STORED = {b"content-length", b"idempotent-replayed"}


class IdempotencyMiddleware:
    def __init__(self, app, target: str = "127.0.0.1:50051",
                 namespace: str = "http", *,
                 client: Optional[IdemClient] = None,
                 credentials: Optional[grpc.ChannelCredentials] = None,
                 header: str = "Idempotency-Key",
                 methods: Iterable[str] = ("POST", "PUT", "PATCH"),
                 require_key: bool = False, wait: float = 0.0,
                 lease: float = 30.0, retention: Optional[float] = None,
                 release_on_5xx: bool = True,
                 max_body_bytes: int = 1 << 20,
                 key_func: Optional[Callable[[dict, str], str]] = None,
                 max_concurrent_calls: int = 64):
        self.app = app
        self.client = client or IdemClient(target, credentials=credentials)
        self.namespace = namespace
        self.header = header.lower().encode("latin-1")
        self.methods = {m.upper() for m in methods}
        self.require_key = require_key
        self.wait = wait
        self.lease = lease
        self.retention = retention
        self.release_on_5xx = release_on_5xx
        self.max_body_bytes = max_body_bytes
        # Keys live per namespace: scope them per caller (e.g. prefix the
        # authenticated user) when clients could pick each other's keys.
        self.key_func = key_func
        # The client is synchronous: its calls run on threads of their own,
        # and heartbeats on separate ones, so that many waiting Begins can
        # never starve the heartbeats that keep running requests' leases.
        self._calls = concurrent.futures.ThreadPoolExecutor(
            max_concurrent_calls, thread_name_prefix="idem-call")
        self._beats = concurrent.futures.ThreadPoolExecutor(
            8, thread_name_prefix="idem-beat")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"].upper() not in self.methods:
            await self.app(scope, receive, send)
            return
        # Repeated headers may arrive as one comma-joined value (RFC 9110).
        keys = [part.strip()
                for name, value in scope.get("headers", [])
                if name.lower() == self.header
                for part in value.decode("latin-1").split(",")]
        if len(keys) > 1:
            await _send_json(send, 400, {
                "error": f"send one {self.header.decode()} header, not "
                         f"{len(keys)}"})
            return
        key = keys[0] if keys else ""
        if not key:
            if self.require_key:
                await _send_json(send, 400, {
                    "error": f"the {self.header.decode()} header is required "
                             "for this request"})
            else:
                await self.app(scope, receive, send)
            return

        if self.key_func is not None:
            key = self.key_func(scope, key)
        body, complete = await _read_body(receive, self.max_body_bytes)
        if not complete:
            return  # The client went away mid-body: nothing to run.
        if body is None:
            await _send_json(send, 413, {
                "error": "the request body is larger than this idempotent "
                         f"endpoint accepts ({self.max_body_bytes} bytes)"})
            return
        path = scope.get("raw_path") or scope["path"].encode("utf-8")
        query = scope.get("query_string", b"")
        target = path + (b"?" + query if query else b"")
        fp = fingerprint_parts(scope["method"].upper(), target, body)
        loop = asyncio.get_running_loop()
        try:
            begun = await loop.run_in_executor(self._calls, lambda: self.client.begin(
                self.namespace, key, fingerprint=fp, lease=self.lease,
                retention=self.retention, wait=self.wait))
        except IdemError as error:
            if error.code in (grpc.StatusCode.INVALID_ARGUMENT,
                              grpc.StatusCode.RESOURCE_EXHAUSTED):
                await _send_json(send, 400, {
                    "error": f"unusable idempotency key: {error}"})
            else:
                await _send_json(send, 503, {
                    "error": "the idempotency store is unavailable; retry "
                             "later"})
            return

        if begun.outcome == COMPLETED:
            await _replay(send, begun.result)
            return
        if begun.outcome == IN_PROGRESS:
            await _send_json(send, 409, {
                "error": "a request with this idempotency key is in progress; "
                         "retry later"}, [(b"retry-after", b"1")])
            return
        if begun.outcome != ACQUIRED:
            await _send_json(send, 422, {
                "error": "this idempotency key was already used with a "
                         "different request"})
            return

        await self._run(scope, body, receive, send, key, begun.token, loop)

    async def _run(self, scope, body, receive, send, key, token, loop):
        heartbeat = asyncio.ensure_future(self._heartbeat(key, token, loop))
        status = 500
        headers: List[Tuple[bytes, bytes]] = []
        chunks: List[bytes] = []
        started = False

        async def replay_receive():
            nonlocal started
            if started:
                # After the body, the real channel: a disconnect comes only
                # when the client really goes away.
                return await receive()
            started = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def capture(message):
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await self.app(scope, replay_receive, capture)
        except BaseException:
            heartbeat.cancel()
            await self._release(key, token, loop)
            raise
        heartbeat.cancel()
        response_body = b"".join(chunks)
        if status >= 500 and self.release_on_5xx:
            await self._release(key, token, loop)
        else:
            stored = [[n.decode("latin-1"), v.decode("latin-1")]
                      for n, v in headers if n.lower() not in _NOT_STORED]
            result = Result(code=status, body=response_body,
                            metadata={_HEADERS_KEY: json.dumps(stored)})
            try:
                await loop.run_in_executor(self._calls, lambda: self.client.complete(
                    self.namespace, key, token, result,
                    retention=self.retention))
            except IdemError as error:
                # The work is done but its result is not stored: say so
                # rather than pretend, so that the caller does not retry
                # blindly.
                await _send_json(send, 503, {
                    "error": "the request ran but its result could not be "
                             f"stored: {error}"})
                return
        await _send(send, status, headers, response_body)

    async def _heartbeat(self, key, token, loop):
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                await loop.run_in_executor(self._beats, lambda: self.client.extend(
                    self.namespace, key, token, self.lease))
            except IdemError:
                pass  # Completing will tell whether the lease held.

    async def _release(self, key, token, loop):
        try:
            await loop.run_in_executor(self._calls, lambda: self.client.release(
                self.namespace, key, token))
        except IdemError:
            pass  # The lease lapses by itself.


async def _read_body(receive, limit: int) -> Tuple[Optional[bytes], bool]:
    """(body, complete): the whole request body, or None once it exceeds
    `limit` bytes (it is held in memory to fingerprint it and to hand it to
    the app); complete is False when the client disconnected mid-body."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None, False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None, True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True


async def _send(send, status: int, headers, body: bytes):
    headers = [(n, v) for n, v in headers if n.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode("ascii")))
    await send({"type": "http.response.start", "status": status,
                "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send, status: int, payload, extra_headers=()):
    await _send(send, status,
                [(b"content-type", b"application/json"), *extra_headers],
                json.dumps(payload).encode("utf-8"))


async def _replay(send, result: Result):
    pairs = json.loads(result.metadata.get(_HEADERS_KEY, "[]"))
    headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in pairs]
    headers.append((b"idempotent-replayed", b"true"))
    await _send(send, result.code, headers, result.body)
