"""The client's side of idem.v1.Idempotency/Session (docs/api.md#sessions).

One stream is shared by every thread of an IdemClient. Calls queue their
operation; the stream's request iterator takes every operation queued at that
moment into one message, so calls made at the same time share messages. A
reader thread routes each answer to its caller by id.

When the stream ends (server restart, network loss), every call still
waiting fails with UNAVAILABLE, exactly like a lost unary reply, and the
client's retries use a new stream. A server without Session answers
UNIMPLEMENTED: ``supported`` turns False and the client calls unary RPCs.
"""

import itertools
import queue
import threading
from typing import Dict, Optional

import grpc
from google.protobuf import duration_pb2

from idem.v1 import idempotency_pb2 as pb

# SessionOp field for each unary method name.
_FIELDS = {"Begin": "begin", "Complete": "complete", "Release": "release",
           "Extend": "extend", "Lookup": "lookup", "Checkpoint": "checkpoint"}
# Operations share a message up to about this many bytes.
_MESSAGE_BYTES = 1 << 20


class SessionError(grpc.RpcError):
    """An operation's status, shaped like the grpc.RpcError of a unary call
    (``code()``, ``details()``), so that one retry loop handles both."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


_CODES = {c.value[0]: c for c in grpc.StatusCode}


class _Waiter:
    __slots__ = ("done", "result", "error")

    def __init__(self):
        self.done = threading.Event()
        self.result = None
        self.error: Optional[SessionError] = None


class _Stream:
    """One Session call: a request iterator fed by a queue, and a reader."""

    _END = object()

    def __init__(self, stub):
        self._queue: "queue.Queue" = queue.Queue()
        self._lock = threading.Lock()
        self._waiters: Dict[int, _Waiter] = {}
        self.ended = False
        self.unimplemented = False
        self._call = stub.Session(self._requests())
        reader = threading.Thread(target=self._read, daemon=True,
                                  name="idem-session-reader")
        reader.start()

    def send(self, op: "pb.SessionOp", waiter: _Waiter) -> bool:
        with self._lock:
            if self.ended:
                return False
            self._waiters[op.id] = waiter
        self._queue.put(op)
        return True

    def abandon(self, op_id: int) -> bool:
        """The caller gave up: True if the answer had not come."""
        with self._lock:
            return self._waiters.pop(op_id, None) is not None

    def cancel(self) -> None:
        self._queue.put(self._END)
        self._call.cancel()

    def _requests(self):
        while True:
            op = self._queue.get()
            if op is self._END:
                return
            message = pb.SessionRequest()
            message.ops.append(op)
            size = op.ByteSize()
            # Everything queued meanwhile goes in the same message.
            while size < _MESSAGE_BYTES:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is self._END:
                    yield message
                    return
                message.ops.append(more)
                size += more.ByteSize()
            yield message

    def _read(self):
        ended = SessionError(grpc.StatusCode.UNAVAILABLE,
                             "the session stream ended before the answer "
                             "came; retry")
        try:
            for response in self._call:
                for result in response.results:
                    with self._lock:
                        waiter = self._waiters.pop(result.id, None)
                    if waiter is None:
                        continue  # Abandoned.
                    if result.status.code != 0:
                        waiter.error = SessionError(
                            _CODES.get(result.status.code,
                                       grpc.StatusCode.UNKNOWN),
                            result.status.message)
                    else:
                        waiter.result = result
                    waiter.done.set()
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                self.unimplemented = True
            if code in (grpc.StatusCode.UNIMPLEMENTED,
                        grpc.StatusCode.UNAUTHENTICATED,
                        grpc.StatusCode.PERMISSION_DENIED):
                ended = SessionError(code, error.details() or "")
            else:
                ended = SessionError(
                    grpc.StatusCode.UNAVAILABLE,
                    "the session stream ended before the answer came "
                    f"({code.name}: {error.details()}); retry")
        with self._lock:
            self.ended = True
            waiters, self._waiters = self._waiters, {}
        self._queue.put(self._END)
        for waiter in waiters.values():
            waiter.error = ended
            waiter.done.set()


class SessionMux:
    """Sends unary-shaped calls over one shared Session stream."""

    def __init__(self, stub_source):
        # stub_source() returns the client's current stub (its channel may be
        # replaced after failures).
        self._stub_source = stub_source
        self._lock = threading.Lock()
        self._stream: Optional[_Stream] = None
        self._ids = itertools.count(1)
        self.supported = True

    def _current(self) -> Optional[_Stream]:
        with self._lock:
            if not self.supported:
                return None
            if self._stream is None or self._stream.ended:
                if self._stream is not None and self._stream.unimplemented:
                    self.supported = False
                    return None
                self._stream = _Stream(self._stub_source())
            return self._stream

    def call(self, method_name: str, request, timeout: float):
        """The unary response of ``method_name`` for ``request``, or raises
        SessionError (UNIMPLEMENTED: use the unary RPC)."""
        stream = self._current()
        if stream is None:
            raise SessionError(grpc.StatusCode.UNIMPLEMENTED,
                               "the server has no Session RPC")
        field = _FIELDS[method_name]
        op = pb.SessionOp(id=next(self._ids))
        getattr(op, field).CopyFrom(request)
        op.timeout.CopyFrom(duration_pb2.Duration(
            seconds=int(timeout), nanos=int((timeout % 1) * 1e9)))
        waiter = _Waiter()
        if not stream.send(op, waiter):
            raise SessionError(grpc.StatusCode.UNAVAILABLE,
                               "the session stream ended; retry")
        if not waiter.done.wait(timeout):
            if stream.abandon(op.id):
                raise SessionError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   "no answer from the server before the "
                                   "deadline")
            waiter.done.wait()
        if waiter.error is not None:
            if waiter.error.code() == grpc.StatusCode.UNIMPLEMENTED:
                with self._lock:
                    self.supported = False
            raise waiter.error
        return getattr(waiter.result, field)

    def close(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.cancel()
