// @idem/client: the Idem client for Node.js (see docs/clients.md).
export {
  IdemClient,
  type BeginOptions,
  type BeginResult,
  type CallOptions,
  type ClientOptions,
  type KeyState,
  type LookupResult,
  type Outcome,
  type Result,
  type ResultInput,
  type RunContext,
  type RunOptions,
  type TlsOptions,
  type Work,
} from "./client";
export {
  Aborted,
  AlreadyStored,
  IdemError,
  InProgress,
  LeaseLost,
  Mismatch,
  Unavailable,
} from "./errors";
export { fingerprint, fingerprintParts, type Bytes } from "./fingerprint";
export {
  idempotentConsumer,
  sortedJson,
  type ConsumerOptions,
  type ConsumerOutcome,
} from "./consumer";
