"""Errors of the Idem client, one class per thing a caller handles apart."""

import grpc


class IdemError(Exception):
    """A call failed; ``code`` is the gRPC status code."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.UNKNOWN):
        super().__init__(message)
        self.code = code


class Unavailable(IdemError):
    """The server could not be reached or its storage failed (retry later).

    The change may or may not have been made.
    """


class LeaseLost(IdemError):
    """This attempt no longer holds the key (its lease lapsed and another
    attempt took over, or it was released): do not complete it."""


class Mismatch(IdemError):
    """The key was already used with a different request."""


class InProgress(IdemError):
    """Another attempt holds the key and the wait (if any) ran out."""


class AlreadyStored(IdemError):
    """A different result is already stored under this token."""


def from_rpc_error(error: grpc.RpcError) -> IdemError:
    code = error.code()
    message = f"{code.name}: {error.details()}"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable(message, code)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return LeaseLost(message, code)
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return AlreadyStored(message, code)
    return IdemError(message, code)
