// Errors of the Idem client: one class per thing a caller handles apart,
// as in the C++, Python and Go clients. `code` is the gRPC status code.
import { status as Status } from "@grpc/grpc-js";

export class IdemError extends Error {
  /** The gRPC status code (2, UNKNOWN, when there was no RPC). */
  readonly code: number;

  constructor(message: string, code: number = Status.UNKNOWN) {
    super(message);
    this.name = new.target.name;
    this.code = code;
  }
}

/**
 * The server could not be reached in time, or its storage failed: retry
 * later. The change may or may not have been made.
 */
export class Unavailable extends IdemError {}

/**
 * This attempt no longer holds the key (its lease lapsed and another
 * attempt took over, or it was released): do not complete it.
 */
export class LeaseLost extends IdemError {}

/** The key was already used with a different request. */
export class Mismatch extends IdemError {}

/** Another attempt holds the key, and the wait (if any) ran out. */
export class InProgress extends IdemError {}

/** A different result is already stored under this token. */
export class AlreadyStored extends IdemError {}

/** The caller's AbortSignal fired; `cause` is the signal's reason. */
export class Aborted extends IdemError {
  constructor(reason: unknown) {
    super(
      `the call was aborted${reason instanceof Error ? `: ${reason.message}` : ""}`,
      Status.CANCELLED,
    );
    this.cause = reason;
  }
}

/** The error a caller sees for a failed RPC with `code` and `details`. */
export function fromStatus(code: number, details: string): IdemError {
  const message = `${Status[code] ?? code}: ${details}`;
  switch (code) {
    case Status.UNAVAILABLE:
    case Status.DEADLINE_EXCEEDED:
      return new Unavailable(message, code);
    case Status.FAILED_PRECONDITION:
      return new LeaseLost(message, code);
    case Status.ALREADY_EXISTS:
      return new AlreadyStored(message, code);
    default:
      return new IdemError(message, code);
  }
}
