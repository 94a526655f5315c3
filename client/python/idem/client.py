"""A small synchronous client for idem.v1.Idempotency, over the generated stubs.

    from idem import IdemClient, Result
    client = IdemClient("127.0.0.1:50051")
    result = client.run("orders", key, work, fingerprint=fingerprint(body))

``run`` is the whole protocol: Begin (waiting for an attempt in progress),
the work with a heartbeat that extends the lease, then Complete with the
work's result, or Release when the work raises. A retry of the same key gets
the stored result back (``result.replayed``) without running the work again.
"""

import dataclasses
import datetime
import random
import threading
import time
import uuid
from typing import Callable, Dict, Optional, Union

import grpc
from google.protobuf import duration_pb2

from idem.errors import (IdemError, InProgress, LeaseLost, Mismatch,
                         Unavailable, from_rpc_error)
from idem.session import SessionError, SessionMux
from idem.v1 import idempotency_pb2 as pb
from idem.v1 import idempotency_pb2_grpc as pb_grpc

ACQUIRED = "ACQUIRED"
COMPLETED = "COMPLETED"
IN_PROGRESS = "IN_PROGRESS"
MISMATCH = "MISMATCH"

_OUTCOMES = {
    pb.BeginResponse.OUTCOME_ACQUIRED: ACQUIRED,
    pb.BeginResponse.OUTCOME_COMPLETED: COMPLETED,
    pb.BeginResponse.OUTCOME_IN_PROGRESS: IN_PROGRESS,
    pb.BeginResponse.OUTCOME_MISMATCH: MISMATCH,
}
_STATES = {
    pb.LookupResponse.STATE_ABSENT: "ABSENT",
    pb.LookupResponse.STATE_IN_PROGRESS: IN_PROGRESS,
    pb.LookupResponse.STATE_COMPLETED: COMPLETED,
}
_RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclasses.dataclass
class Result:
    """What the work produced: an HTTP-like code, a body and metadata."""

    code: int = 0
    body: bytes = b""
    metadata: Dict[str, str] = dataclasses.field(default_factory=dict)
    # True when this came back from the store (a retry), not from the work.
    replayed: bool = False


@dataclasses.dataclass
class BeginResult:
    outcome: str
    token: int = 0
    lease_expires_at: Optional[datetime.datetime] = None
    result: Optional[Result] = None
    attempt: int = 0
    checkpoint: bytes = b""


@dataclasses.dataclass
class LookupResult:
    state: str
    lease_expires_at: Optional[datetime.datetime] = None
    result: Optional[Result] = None
    fingerprint: bytes = b""
    attempt: int = 0


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(round(seconds * 1e9)))
    return d


def _time(ts) -> Optional[datetime.datetime]:
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.ToDatetime(tzinfo=datetime.timezone.utc)


def _result(message, replayed: bool) -> Result:
    return Result(code=message.code, body=bytes(message.body),
                  metadata=dict(message.metadata), replayed=replayed)


class RunContext:
    """What the work function of ``run`` sees."""

    def __init__(self, token: int, attempt: int):
        self.token = token  # Fencing token: hand it to downstream systems.
        self.attempt = attempt
        self.lease_lost = threading.Event()  # Set if the heartbeat lost it.


class IdemClient:
    """Typed calls with retries of UNAVAILABLE / DEADLINE_EXCEEDED (12
    attempts, exponential backoff with equal jitter, 100 ms to 2 s, 20 s in
    all: enough to ride out a server restart of several seconds). After a
    failed attempt the channel is replaced by one with its own connection (at
    most every 500 ms), since gRPC's own reconnect waits seconds.

    Calls go over one Session stream shared by every thread using the client
    (calls made at the same time share messages), and fall back to unary RPCs
    against a server without Session; ``session=False`` asks for unary RPCs
    always. A call whose stream breaks is retried like a lost unary reply."""

    def __init__(self, target: str = "127.0.0.1:50051", *,
                 credentials: Optional[grpc.ChannelCredentials] = None,
                 timeout: float = 5.0, attempts: int = 12,
                 total_timeout: float = 20.0, session: bool = True):
        self._target = target
        self._credentials = credentials
        self._lock = threading.Lock()
        self._replaced_at = 0.0
        self._channel, self._stub = self._connect()
        self._timeout = timeout
        self._attempts = attempts
        self._total_timeout = total_timeout
        self._session = SessionMux(self._current_stub) if session else None

    def _current_stub(self):
        with self._lock:
            return self._stub

    def _connect(self):
        options = [("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 2000),
                   # A connection of its own, so that a replacement channel
                   # does not inherit one waiting out its backoff.
                   ("grpc.use_local_subchannel_pool", 1)]
        if self._credentials is None:
            channel = grpc.insecure_channel(self._target, options=options)
        else:
            channel = grpc.secure_channel(self._target, self._credentials,
                                          options=options)
        return channel, pb_grpc.IdempotencyStub(channel)

    def _replace_channel(self) -> None:
        with self._lock:
            if time.monotonic() - self._replaced_at < 0.5:
                return
            self._replaced_at = time.monotonic()
            old = self._channel
            self._channel, self._stub = self._connect()
        # Calls still running on the old channel finish first.
        closer = threading.Timer(self._timeout + 1, old.close)
        closer.daemon = True
        closer.start()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        with self._lock:
            self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method_name: str, request, extra_timeout: float = 0.0):
        deadline = time.monotonic() + self._total_timeout + extra_timeout
        backoff = 0.1
        for attempt in range(1, self._attempts + 1):
            try:
                if self._session is not None and self._session.supported:
                    try:
                        return self._session.call(
                            method_name, request, self._timeout + extra_timeout)
                    except SessionError as error:
                        if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                            raise
                        # An older server: unary from now on.
                with self._lock:
                    method = getattr(self._stub, method_name)
                return method(request, timeout=self._timeout + extra_timeout)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE:
                    self._replace_channel()
                if (error.code() not in _RETRIED or attempt == self._attempts
                        or time.monotonic() + backoff > deadline):
                    raise from_rpc_error(error) from None
            # Half fixed, half random: the pauses add up to 7.5 s at least.
            time.sleep(random.uniform(backoff / 2, backoff))
            backoff = min(backoff * 2, 2.0)
        raise AssertionError("unreachable")

    def begin(self, namespace: str, key: str, *, fingerprint: bytes = b"",
              request: Optional[bytes] = None, lease: Optional[float] = None,
              retention: Optional[float] = None, wait: float = 0.0,
              owner: str = "") -> BeginResult:
        """Begins the key. Retries reuse one owner, so a Begin whose reply was
        lost gets its own lease back instead of finding itself in progress."""
        message = pb.BeginRequest(namespace=namespace, key=key,
                                  owner=owner or uuid.uuid4().hex)
        if request is not None:
            message.request = request
        else:
            message.fingerprint = fingerprint
        if lease is not None:
            message.lease.CopyFrom(_duration(lease))
        if retention is not None:
            message.retention.CopyFrom(_duration(retention))
        if wait > 0:
            message.wait.CopyFrom(_duration(wait))
        response = self._call("Begin", message, extra_timeout=wait)
        outcome = _OUTCOMES.get(response.outcome)
        if outcome is None:
            raise IdemError(f"unknown Begin outcome {response.outcome}")
        return BeginResult(
            outcome=outcome,
            token=response.lease.token,
            lease_expires_at=_time(response.lease.expires_at),
            result=(_result(response.result, True)
                    if outcome == COMPLETED else None),
            attempt=response.attempt,
            checkpoint=bytes(response.checkpoint))

    def complete(self, namespace: str, key: str, token: int,
                 result: Result, *, retention: Optional[float] = None) -> None:
        message = pb.CompleteRequest(
            namespace=namespace, key=key, token=token,
            result=pb.Result(code=result.code, body=result.body,
                             metadata=result.metadata))
        if retention is not None:
            message.retention.CopyFrom(_duration(retention))
        self._call("Complete", message)

    def release(self, namespace: str, key: str, token: int) -> None:
        self._call("Release",
                   pb.ReleaseRequest(namespace=namespace, key=key, token=token))

    def extend(self, namespace: str, key: str, token: int,
               lease: float) -> datetime.datetime:
        response = self._call("Extend", pb.ExtendRequest(
            namespace=namespace, key=key, token=token, lease=_duration(lease)))
        return _time(response.expires_at)

    def lookup(self, namespace: str, key: str) -> LookupResult:
        response = self._call("Lookup",
                              pb.LookupRequest(namespace=namespace, key=key))
        state = _STATES.get(response.state, "ABSENT")
        return LookupResult(
            state=state,
            lease_expires_at=_time(response.lease.expires_at),
            result=(_result(response.result, True)
                    if state == COMPLETED else None),
            fingerprint=bytes(response.fingerprint),
            attempt=response.attempt)

    def run(self, namespace: str, key: str,
            work: Callable[[RunContext], Union[Result, bytes]], *,
            fingerprint: bytes, lease: float = 30.0, wait: float = 30.0,
            retention: Optional[float] = None) -> Result:
        """Runs ``work`` at most once per key, or returns the stored result.

        Raises Mismatch (the key was used with another request), InProgress
        (another attempt still holds it after ``wait``), LeaseLost (this
        attempt was taken over: its result is not stored), or what ``work``
        raised (the key is then released for a retry).
        """
        begun = self.begin(namespace, key, fingerprint=fingerprint, lease=lease,
                           retention=retention, wait=wait)
        if begun.outcome == COMPLETED:
            return begun.result
        if begun.outcome == MISMATCH:
            raise Mismatch(f"idempotency key {key!r} was already used with a "
                           "different request", grpc.StatusCode.FAILED_PRECONDITION)
        if begun.outcome == IN_PROGRESS:
            raise InProgress(f"idempotency key {key!r} is in progress in "
                             "another attempt", grpc.StatusCode.UNAVAILABLE)
        context = RunContext(begun.token, begun.attempt)
        stop = threading.Event()

        def heartbeat():
            while not stop.wait(lease / 3):
                try:
                    self.extend(namespace, key, begun.token, lease)
                except LeaseLost:
                    context.lease_lost.set()
                    return
                except IdemError:
                    pass  # Try again at the next beat; the lease may hold.

        beat = threading.Thread(target=heartbeat, daemon=True)
        beat.start()
        try:
            produced = work(context)
            if isinstance(produced, str):
                produced = produced.encode("utf-8")
            if not isinstance(produced, (Result, bytes, bytearray)):
                raise TypeError("the work must return an idem.Result, bytes "
                                f"or str, not {type(produced).__name__}")
        except BaseException:
            stop.set()
            beat.join()
            try:
                self.release(namespace, key, begun.token)
            except IdemError:
                pass  # The lease lapses by itself.
            raise
        stop.set()
        beat.join()
        result = produced if isinstance(produced, Result) else Result(
            code=0, body=bytes(produced))
        self.complete(namespace, key, begun.token, result, retention=retention)
        return dataclasses.replace(result, replayed=False)


__all__ = ["IdemClient", "Result", "BeginResult", "LookupResult",
           "RunContext", "ACQUIRED", "COMPLETED", "IN_PROGRESS", "MISMATCH",
           "Unavailable"]
