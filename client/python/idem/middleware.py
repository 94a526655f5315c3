"""ASGI middleware (FastAPI, Starlette) that makes unsafe HTTP methods
idempotent with the ``Idempotency-Key`` header of
draft-ietf-httpapi-idempotency-key-header-06, backed by an Idem server.

    app = FastAPI()
    app.add_middleware(IdempotencyMiddleware, target="idem:50051",
                       namespace="orders")

For POST, PUT and PATCH requests carrying the header:
  * the handler runs at most once per key: its full response (status,
    headers, body) is recorded when it is whole, then sent, and every retry
    with the same key gets it back byte for byte, with
    ``Idempotent-Replayed: true``. Background tasks run after the response
    is recorded and sent: one that raises is logged, never turned into a 5xx
    or a second run. A client that goes away does not stop the recording;
  * a retry while the first is still running gets 409 with ``Retry-After``
    (the holder's lease expiry), or waits for the result with
    ``wait=SECONDS``;
  * the same key with a different request gets 422; the request is the
    method, the target (path and query) and the body, byte for byte, or
    with ``fingerprint="json"`` the body as canonical JSON;
  * a 5xx response is not recorded: the key is released so that a retry
    runs again (``release_on_5xx=False`` records it like any other), and so
    is a request the framework rejected before the handler ran (FastAPI's
    422 validation errors; others call ``mark_not_executed``);
  * an exception in the app before its response is whole releases the key
    and propagates.
Keys are scoped per caller: by default the request's ``Authorization``
value, so that one caller can never get another's stored response;
``caller=`` binds the scope to the app's own user (``key_func=`` replaces the
scoping altogether). The header value is an RFC 8941 string (``"abc"``) or
a plain token (``abc``), 1 to 255 characters; anything else, or more than
one key, gets 400. The middleware's own errors are RFC 9457
``application/problem+json`` with a ``Link`` to ``docs_url``.
Requests without the header pass through untouched, unless ``require_key``
is set: then they get 400. Other methods always pass through. A request body
over ``max_body_bytes`` (1 MiB) gets 413: it is held in memory. Responses
are buffered whole before they are sent (they must be recorded first).
docs/http-middleware.md is the manual.
"""

import asyncio
import concurrent.futures
import datetime
import functools
import hashlib
import inspect
import json
import logging
import math
from typing import Callable, Iterable, List, Optional, Tuple, Union

import grpc

from idem.client import (ACQUIRED, COMPLETED, IN_PROGRESS, IdemClient,
                         Result)
from idem.errors import IdemError
from idem.fingerprint import fingerprint, fingerprint_parts

logger = logging.getLogger("idem.middleware")

DEFAULT_DOCS_URL = ("https://datatracker.ietf.org/doc/"
                    "draft-ietf-httpapi-idempotency-key-header/")
# The server's key limit: printable ASCII, 1 to 255 bytes.
MAX_KEY_LENGTH = 255

_HEADERS_KEY = "http-headers"  # Result metadata: the response headers, JSON.
_NOT_STORED = {b"content-length", b"idempotent-replayed"}
_SCOPE_KEY = "idem.attempt"  # The scope's entry for mark_not_executed.
_ANONYMOUS = "anonymous"  # The scope of requests without a caller.

Fingerprint = Union[str, Callable[[str, bytes, bytes], bytes]]


# --- The header -----------------------------------------------------------

class KeyProblem(ValueError):
    """The Idempotency-Key header is unusable; ``title`` names the problem
    (one per kind), the message says why."""

    def __init__(self, title: str, detail: str):
        super().__init__(detail)
        self.title = title
        self.detail = detail


_INVALID = "Idempotency-Key is invalid"
_SEVERAL = "More than one Idempotency-Key"


def _is_token_char(c: str) -> bool:
    """The characters of an unquoted key: visible ASCII (0x21-0x7E) except
    the ones that would make it ambiguous with a quoted string, a list or
    parameters."""
    return "\x21" <= c <= "\x7e" and c not in '"\\,;'


def _parse_sf_string(value: str) -> Tuple[str, str]:
    """(string, rest): the RFC 8941 sf-string at the start of `value` (which
    begins with a double quote), unescaped, and what follows it."""
    chars = []
    i = 1
    while i < len(value):
        c = value[i]
        if c == "\\":
            if i + 1 == len(value):
                break  # Unterminated.
            escaped = value[i + 1]
            if escaped not in '"\\':
                raise KeyProblem(_INVALID, f"invalid escape \\{escaped} at "
                                 f"position {i}: only \\\" and \\\\ are allowed")
            chars.append(escaped)
            i += 2
            continue
        if c == '"':
            return "".join(chars), value[i + 1:]
        if not " " <= c <= "~":
            raise KeyProblem(_INVALID, f"character 0x{ord(c):02X} at position "
                             f"{i} is not allowed: a key is printable ASCII "
                             "(0x20-0x7E)")
        chars.append(c)
        i += 1
    raise KeyProblem(_INVALID, "unterminated string: no closing double quote")


def parse_idempotency_key(values: List[str]) -> Optional[str]:
    """The key in the Idempotency-Key field values (one per header line, as
    received), or None when there is no such header. Raises KeyProblem.

    A value is an RFC 8941 sf-string (``"abc"``; ``\\"`` and ``\\\\`` are its
    only escapes) or, for clients that do not quote, a plain token of visible
    ASCII without ``"``, ``\\``, ``,`` and ``;`` (``abc``: the same key as
    ``"abc"``), with optional whitespace around it.
    """
    if not values:
        return None
    if len(values) > 1:
        raise KeyProblem(_SEVERAL, f"the request has {len(values)} "
                         "Idempotency-Key header fields; send exactly one key")
    value = values[0].strip(" \t")
    if not value:
        raise KeyProblem(_INVALID, "the Idempotency-Key header is empty")
    if value[0] == '"':
        key, rest = _parse_sf_string(value)
    else:
        end = 0
        while end < len(value) and _is_token_char(value[end]):
            end += 1
        if end == 0:
            raise KeyProblem(_INVALID, f"unexpected character "
                             f"0x{ord(value[0]):02X} at position 0: send a "
                             'quoted string ("...") or a plain token')
        key, rest = value[:end], value[end:]
        if rest and rest[0] not in " \t,":
            raise KeyProblem(_INVALID, f"character 0x{ord(rest[0]):02X} at "
                             f"position {end} is not allowed in an unquoted "
                             "key")
    rest = rest.lstrip(" \t")
    if rest.startswith(","):
        raise KeyProblem(_SEVERAL, "the Idempotency-Key header holds a list "
                         "(a comma outside quotes); send exactly one key")
    if rest:
        position = len(value) - len(rest)
        raise KeyProblem(_INVALID, f"unexpected characters at position "
                         f"{position}, after the key: send one quoted string "
                         "or plain token and nothing else")
    if not key:
        raise KeyProblem(_INVALID, "the key is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise KeyProblem(_INVALID, f"the key has {len(key)} characters; the "
                         f"limit is {MAX_KEY_LENGTH}")
    return key


# --- Scoping keys per caller ----------------------------------------------

def authorization_caller(scope: dict) -> Optional[str]:
    """The default ``caller``: the request's Authorization header value
    (several fields joined with ", "), None when it has none."""
    values = [value.decode("latin-1") for name, value in scope.get("headers", [])
              if name.lower() == b"authorization"]
    return ", ".join(values) if values else None


def scoped_key(principal, key: str) -> str:
    """The Idem key of the client's `key` sent by `principal`: the first 16
    bytes of SHA-256(principal) in hex (or "anonymous" when it is None or
    empty), "/", and the key. When that would exceed the server's 255-byte
    limit, the key part is "sha256:" and the hex SHA-256 of the key."""
    if principal is None or principal == "":
        prefix = _ANONYMOUS
    else:
        prefix = hashlib.sha256(str(principal).encode("utf-8")).hexdigest()[:32]
    scoped = f"{prefix}/{key}"
    if len(scoped) > MAX_KEY_LENGTH:
        digest = hashlib.sha256(key.encode("latin-1")).hexdigest()
        scoped = f"{prefix}/sha256:{digest}"
    return scoped


# --- Fingerprints ---------------------------------------------------------

def canonical_json(body: bytes) -> Optional[bytes]:
    """`body` as canonical JSON in the style of RFC 8785 (object members
    sorted by name, no insignificant whitespace, UTF-8), or None when it is
    not JSON. Unlike full RFC 8785, numbers are written as Python writes
    them (1 and 1.0 differ)."""
    def reject(constant):
        raise ValueError(f"{constant} is not JSON")

    try:
        value = json.loads(body, parse_constant=reject)
        return json.dumps(value, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, UnicodeError, RecursionError):
        return None


def _fingerprint_function(option: Fingerprint):
    """The request's fingerprint (at most 64 bytes, as the server requires)
    as a function of (method, target, body)."""
    if option == "bytes":
        return fingerprint_parts
    if option == "json":
        def json_fingerprint(method, target, body):
            canonical = canonical_json(body)
            # A body that is not JSON cannot equal a canonical text, which
            # is JSON: the two kinds never collide.
            return fingerprint_parts(method, target,
                                     body if canonical is None else canonical)
        return json_fingerprint
    if callable(option):
        return lambda method, target, body: fingerprint(
            option(method, target, body))
    raise ValueError(f'fingerprint must be "bytes", "json" or a function, '
                     f"not {option!r}")


# --- Requests the framework rejected --------------------------------------

class _Attempt:
    """One request holding its key, from Begin until Complete or Release."""

    def __init__(self, key: str, token: int):
        self.key = key
        self.token = token
        self.status = 500
        self.headers: List[Tuple[bytes, bytes]] = []
        self.chunks: List[bytes] = []
        # Set by mark_not_executed: release the key instead of recording.
        self.not_executed = False
        # Completing or releasing has begun: from here on nothing releases
        # the key (a completed handler must never run again).
        self.settled = False
        # The app's response is whole (set when settling begins).
        self.finished = asyncio.Event()


def mark_not_executed(scope_or_request) -> bool:
    """Says that this request was rejected before its handler ran (e.g. a
    validation error), so that the middleware releases the key instead of
    recording the response: the corrected request may reuse the key. Takes
    the ASGI scope or a Starlette/FastAPI Request; call it before the
    response is sent. Returns False when the request holds no key."""
    scope = getattr(scope_or_request, "scope", scope_or_request)
    attempt = scope.get(_SCOPE_KEY) if isinstance(scope, dict) else None
    if attempt is None:
        return False
    attempt.not_executed = True
    return True


def _is_async(handler) -> bool:
    # As Starlette decides whether to await a handler or run it on a thread.
    while isinstance(handler, functools.partial):
        handler = handler.func
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None))


def _wrap_validation_handler(handlers: dict, error_class) -> bool:
    """Replaces the handler of `error_class` in `handlers` (found as
    Starlette finds it, along the class's MRO) by one that marks the request
    not executed and then delegates to it."""
    original = next((handlers[c] for c in error_class.__mro__ if c in handlers),
                    None)
    if original is None:
        return False
    if getattr(original, "_idem_marks_not_executed", False):
        return True

    async def marking_handler(request, exc):
        mark_not_executed(request)
        if _is_async(original):
            return await original(request, exc)
        from starlette.concurrency import run_in_threadpool
        return await run_in_threadpool(original, request, exc)

    marking_handler._idem_marks_not_executed = True
    handlers[error_class] = marking_handler
    return True


def _mark_validation_errors(app) -> bool:
    """Makes FastAPI's RequestValidationError handler below `app` (its
    default or the app's own) call mark_not_executed. Walks the `.app`
    chain of middleware to Starlette's ExceptionMiddleware, which holds the
    handlers (or to a FastAPI app whose stack is not built yet). False when
    there is none: then the app must mark rejections itself."""
    try:
        from fastapi.exceptions import RequestValidationError
    except ImportError:
        return False
    node = app
    for _ in range(100):  # A chain, never a cycle; the bound is a guard.
        if node is None:
            return False
        handlers = getattr(node, "_exception_handlers", None)
        if isinstance(handlers, dict):  # starlette ExceptionMiddleware
            return _wrap_validation_handler(handlers, RequestValidationError)
        if (hasattr(node, "exception_handlers")
                and getattr(node, "middleware_stack", False) is None):
            # An app that builds its stack (from these) at its first call.
            return _wrap_validation_handler(node.exception_handlers,
                                            RequestValidationError)
        node = getattr(node, "middleware_stack", None) or getattr(
            node, "app", None)
    return False


# --- The middleware -------------------------------------------------------

class IdempotencyMiddleware:
    """See the module docstring and docs/http-middleware.md. Thread-safe
    across the requests of one event loop; the Idem calls run on threads."""

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
                 caller: Optional[Callable[[dict], Optional[str]]] = None,
                 key_func: Optional[Callable[[dict, str], str]] = None,
                 fingerprint: Fingerprint = "bytes",
                 docs_url: str = DEFAULT_DOCS_URL,
                 max_concurrent_calls: int = 64):
        if caller is not None and key_func is not None:
            raise ValueError("pass caller or key_func, not both: key_func "
                             "replaces the per-caller scoping")
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
        # Keys live per caller: the principal's digest prefixes the key, so
        # that one caller's key never finds another's response.
        self.caller = caller or authorization_caller
        self.key_func = key_func
        self.fingerprint = _fingerprint_function(fingerprint)
        self.docs_url = docs_url
        self._framework_hooked = False
        # The client is synchronous: its calls run on threads of their own,
        # and heartbeats on separate ones, so that many waiting Begins can
        # never starve the heartbeats that keep running requests' leases.
        self._calls = concurrent.futures.ThreadPoolExecutor(
            max_concurrent_calls, thread_name_prefix="idem-call")
        self._beats = concurrent.futures.ThreadPoolExecutor(
            8, thread_name_prefix="idem-beat")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"].upper() not in self.methods:
            await self.app(scope, receive, send)  # lifespan, websocket, GET...
            return
        if not self._framework_hooked:
            # At the first request: the app below is built by then.
            self._framework_hooked = True
            if not _mark_validation_errors(self.app):
                logger.info("no FastAPI RequestValidationError handler found "
                            "below the middleware: requests the framework "
                            "rejects are recorded unless the app calls "
                            "idem.middleware.mark_not_executed")
        values = [value.decode("latin-1")
                  for name, value in scope.get("headers", [])
                  if name.lower() == self.header]
        try:
            key = parse_idempotency_key(values)
        except KeyProblem as problem:
            await self._problem(send, 400, problem.title, problem.detail)
            return
        if key is None:
            if self.require_key:
                await self._problem(
                    send, 400, "Idempotency-Key is missing",
                    f"this operation requires an {self.header.decode()} "
                    "header")
            else:
                await self.app(scope, receive, send)
            return

        if self.key_func is not None:
            key = self.key_func(scope, key)
        else:
            key = scoped_key(self.caller(scope), key)
        body, complete = await _read_body(receive, self.max_body_bytes)
        if not complete:
            return  # The client went away mid-body: nothing to run.
        if body is None:
            await self._problem(
                send, 413, "Request body too large",
                "the request body is larger than this idempotent endpoint "
                f"accepts ({self.max_body_bytes} bytes)")
            return
        path = scope.get("raw_path") or scope["path"].encode("utf-8")
        query = scope.get("query_string", b"")
        target = path + (b"?" + query if query else b"")
        fp = self.fingerprint(scope["method"].upper(), target, body)
        loop = asyncio.get_running_loop()
        token = await self._begin(send, key, fp, loop)
        if token is not None:
            await self._run(scope, body, receive, send, _Attempt(key, token),
                            loop)

    async def _begin(self, send, key: str, fp: bytes, loop) -> Optional[int]:
        """Begins `key`: the lease token when this request acquired it;
        otherwise answers the request (replay, 409, 422, 400 or 503) and
        returns None."""
        try:
            begun = await loop.run_in_executor(self._calls, lambda: self.client.begin(
                self.namespace, key, fingerprint=fp, lease=self.lease,
                retention=self.retention, wait=self.wait))
        except IdemError as error:
            if error.code in (grpc.StatusCode.INVALID_ARGUMENT,
                              grpc.StatusCode.RESOURCE_EXHAUSTED):
                await self._problem(send, 400, _INVALID,
                                    f"unusable idempotency key: {error}")
            else:
                await self._problem(
                    send, 503, "Idempotency store unavailable",
                    "the idempotency store is unavailable; retry later")
            return None
        if begun.outcome == ACQUIRED:
            return begun.token
        if begun.outcome == COMPLETED:
            await _replay(send, begun.result)
        elif begun.outcome == IN_PROGRESS:
            await self._problem(
                send, 409, "A request is outstanding for this Idempotency-Key",
                "a request with this idempotency key is being processed; "
                "retry after the time in Retry-After",
                [(b"retry-after", _retry_after(begun.lease_expires_at))])
        else:
            await self._problem(
                send, 422, "Idempotency-Key is already used",
                "this idempotency key was already used with a different "
                "request (method, target or body)")
        return None

    async def _run(self, scope, body, receive, send, attempt, loop):
        """Runs the app under the key: records its response when it is whole
        (Complete, or Release for a 5xx or a rejected request), then sends
        it; releases the key if the app fails before that."""
        heartbeat = asyncio.ensure_future(self._heartbeat(attempt, loop))
        scope[_SCOPE_KEY] = attempt  # For mark_not_executed.
        body_given = False

        async def app_receive():
            nonlocal body_given
            if not body_given:
                body_given = True
                return {"type": "http.request", "body": body, "more_body": False}
            # The response is recorded for the retry whether or not this
            # client stays: the app sees a disconnect only once it is whole,
            # so that a streaming response is not cut short.
            await attempt.finished.wait()
            return await receive()

        async def app_send(message):
            kind = message["type"]
            if attempt.settled:
                return  # Nothing may follow the last body (ASGI).
            if kind == "http.response.start":
                attempt.status = message["status"]
                attempt.headers = list(message.get("headers", []))
            elif kind == "http.response.body":
                attempt.chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    heartbeat.cancel()
                    await self._settle(attempt, send, loop)
            else:
                await send(message)  # Extensions (e.g. the test client's).

        try:
            await self.app(scope, app_receive, app_send)
        except BaseException as error:
            heartbeat.cancel()
            if not attempt.settled:
                await self._release(attempt, loop)
                raise
            if not isinstance(error, Exception):
                raise  # Cancellation: what was settled stays settled.
            # The response was settled (recorded, or released) and sent:
            # this came after it, from a background task. A 5xx now would
            # be a lie, and releasing would run the handler again.
            logger.exception(
                "%s %s raised after its response was settled and sent "
                "(a background task?); the response stands",
                scope["method"], scope.get("path"))
            return
        heartbeat.cancel()
        if not attempt.settled:
            await self._release(attempt, loop)
            raise RuntimeError("the app returned without completing its "
                               "response; its idempotency key was released")

    async def _settle(self, attempt, send, loop):
        """Completes (or releases) the key with the app's whole response,
        then sends the response to the client."""
        attempt.settled = True
        attempt.finished.set()
        body = b"".join(attempt.chunks)
        if attempt.not_executed or (attempt.status >= 500
                                    and self.release_on_5xx):
            await self._release(attempt, loop)
        else:
            stored = [[n.decode("latin-1"), v.decode("latin-1")]
                      for n, v in attempt.headers if n.lower() not in _NOT_STORED]
            result = Result(code=attempt.status, body=body,
                            metadata={_HEADERS_KEY: json.dumps(stored)})
            try:
                await self._shielded(loop, "Complete", attempt, lambda: (
                    self.client.complete(self.namespace, attempt.key,
                                         attempt.token, result,
                                         retention=self.retention)))
            except IdemError as error:
                # The work is done but its result is not stored: say so
                # rather than pretend, so that the caller does not retry
                # blindly.
                await self._problem(
                    send, 503, "Result not recorded",
                    f"the request ran but its result could not be stored: "
                    f"{error}")
                return
        try:
            await _send(send, attempt.status, attempt.headers, body)
        except Exception:  # pylint: disable=broad-except
            # The client went away (some servers raise then). The key is
            # settled already: a retry gets the recorded response.
            logger.info("the response to key %r could not be sent (the "
                        "client went away?); the key stays settled",
                        attempt.key, exc_info=True)

    async def _shielded(self, loop, name, attempt, call):
        """Runs `call` on a call thread; cancelling the caller (a client
        gone, a timeout around the app) does not cancel the call, which may
        be the Complete that keeps a handler from running twice."""
        future = loop.run_in_executor(self._calls, call)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            def report(done):
                if not done.cancelled() and done.exception() is not None:
                    logger.error("%s of key %r failed after its request was "
                                 "cancelled: %s", name, attempt.key,
                                 done.exception())
            future.add_done_callback(report)
            raise

    async def _heartbeat(self, attempt, loop):
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                await loop.run_in_executor(self._beats, lambda: self.client.extend(
                    self.namespace, attempt.key, attempt.token, self.lease))
            except IdemError:
                pass  # Completing will tell whether the lease held.

    async def _release(self, attempt, loop):
        try:
            await self._shielded(loop, "Release", attempt, lambda: (
                self.client.release(self.namespace, attempt.key,
                                    attempt.token)))
        except IdemError:
            pass  # The lease lapses by itself.

    async def _problem(self, send, status: int, title: str, detail: str,
                       extra_headers=()):
        """An RFC 9457 problem response about idempotency, with the Link to
        the API's documentation the draft recommends."""
        payload = {"type": self.docs_url, "title": title, "status": status,
                   "detail": detail}
        link = f'<{self.docs_url}>; rel="describedby"; type="text/html"'
        await _send(send, status,
                    [(b"content-type", b"application/problem+json"),
                     (b"link", link.encode("latin-1")), *extra_headers],
                    json.dumps(payload).encode("utf-8"))


def _retry_after(lease_expires_at: Optional[datetime.datetime]) -> bytes:
    """Whole seconds until the holder's lease lapses, rounded up, at least
    1: by then the holder has finished, or another attempt may take over."""
    if lease_expires_at is None:
        return b"1"
    left = (lease_expires_at
            - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    return str(max(1, math.ceil(left))).encode("ascii")


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


async def _replay(send, result: Result):
    pairs = json.loads(result.metadata.get(_HEADERS_KEY, "[]"))
    headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in pairs]
    headers.append((b"idempotent-replayed", b"true"))
    await _send(send, result.code, headers, result.body)


__all__ = ["IdempotencyMiddleware", "KeyProblem", "DEFAULT_DOCS_URL",
           "authorization_caller", "canonical_json", "mark_not_executed",
           "parse_idempotency_key", "scoped_key"]
