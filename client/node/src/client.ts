// A client for idem.v1.Idempotency over @grpc/grpc-js and the stubs ts-proto
// generates from proto/ at build time. Its public types are its own: no
// generated message leaks out.
//
//   const client = new IdemClient({ target: "127.0.0.1:50051" });
//   const result = await client.run("orders", key, async () => charge(), {
//     fingerprint: fingerprint(body),
//   });
//
// run() is the whole protocol: Begin (waiting for an attempt in progress),
// the work with a heartbeat that extends the lease, then Complete with the
// work's result, or Release when the work throws. A retry of the same key
// gets the stored result back (result.replayed) without running the work.
//
// Every call is retried on UNAVAILABLE and DEADLINE_EXCEEDED (12 attempts,
// exponential backoff with equal jitter from 100 ms to 2 s, 20 s in all:
// enough to ride out a server restart), with the same request, so a Begin
// whose reply was lost keeps its owner and gets its own lease back. After
// UNAVAILABLE the channel is replaced by one with a connection of its own
// (at most every 500 ms), since gRPC's own reconnect may wait seconds.
import { randomUUID } from "node:crypto";

import {
  ChannelCredentials,
  type ChannelOptions,
  type Client as GrpcClient,
  credentials as grpcCredentials,
  Metadata,
  type ServiceError,
  status as Status,
} from "@grpc/grpc-js";

import {
  Aborted,
  fromStatus,
  IdemError,
  InProgress,
  LeaseLost,
  Mismatch,
} from "./errors";
import { Duration } from "./gen/google/protobuf/duration";
import {
  type BeginRequest,
  type BeginResponse,
  BeginResponse_Outcome,
  type CheckpointRequest,
  type CheckpointResponse,
  type CompleteRequest,
  type CompleteResponse,
  type ExtendRequest,
  type ExtendResponse,
  IdempotencyClient,
  type LookupRequest,
  type LookupResponse,
  LookupResponse_State,
  type ReleaseRequest,
  type ReleaseResponse,
  type Result as ResultMessage,
} from "./gen/idem/v1/idempotency";

/** What work produced: an HTTP-like code, a body and string metadata. */
export interface Result {
  code: number;
  body: Buffer;
  metadata: Record<string, string>;
  /** True when this came back from the store (a retry), not from the work. */
  replayed: boolean;
}

/** A Result to store; `replayed` is ignored. */
export interface ResultInput {
  code?: number;
  body?: string | Uint8Array;
  metadata?: Record<string, string>;
}

export type Outcome = "ACQUIRED" | "COMPLETED" | "IN_PROGRESS" | "MISMATCH";

export interface BeginResult {
  outcome: Outcome;
  /** ACQUIRED: the fencing token (0n otherwise). */
  token: bigint;
  /** ACQUIRED: this attempt's lease; IN_PROGRESS: the holder's. */
  leaseExpiresAt?: Date;
  /** COMPLETED: the stored result. */
  result?: Result;
  /** Which attempt at the key this is (ACQUIRED) or was (others). */
  attempt: number;
  /** ACQUIRED: what the previous attempt checkpointed, if anything. */
  checkpoint: Buffer;
}

export type KeyState = "ABSENT" | "IN_PROGRESS" | "COMPLETED";

export interface LookupResult {
  state: KeyState;
  leaseExpiresAt?: Date;
  result?: Result;
  fingerprint: Buffer;
  createdAt?: Date;
  expiresAt?: Date;
  attempt: number;
  checkpoint: Buffer;
}

export interface TlsOptions {
  /** PEM of the CA that signed the server's certificate (default: the system's). */
  ca?: Buffer | string;
  /** PEM of this client's certificate and key, for mutual TLS. */
  cert?: Buffer | string;
  key?: Buffer | string;
  /** The name to check the server's certificate against, if not the target's host. */
  serverName?: string;
}

export interface ClientOptions {
  /** host:port of idem-server (default 127.0.0.1:50051). */
  target?: string;
  /** TLS, or mutual TLS with cert and key; plaintext when absent. */
  tls?: TlsOptions;
  /** Sent as `authorization: Bearer TOKEN` with every call (needs tls). */
  bearerToken?: string;
  /** Per attempt (default 5000 ms; a Begin's wait is added). */
  timeoutMs?: number;
  /** Attempts per call (default 12). */
  attempts?: number;
  /** All attempts of a call (default 20000 ms; a Begin's wait is added). */
  totalTimeoutMs?: number;
  /** Extra gRPC channel options. */
  channelOptions?: ChannelOptions;
}

export interface CallOptions {
  /** Aborting cancels the call in flight and its retries. */
  signal?: AbortSignal;
}

export interface BeginOptions extends CallOptions {
  /** SHA-256 of the request (see fingerprint()); or `request` instead. */
  fingerprint?: Uint8Array;
  /** The request bytes: the server fingerprints them. */
  request?: Uint8Array;
  /** The lease in ms (default: the server's, 30 s). */
  leaseMs?: number;
  /** How long a completed result is kept, in ms (default: the server's). */
  retentionMs?: number;
  /** Wait up to this many ms for an attempt in progress to finish. */
  waitMs?: number;
  /** The attempt's owner id (default: a new random one per begin). */
  owner?: string;
}

export interface RunContext {
  /** The fencing token: hand it to downstream systems. */
  token: bigint;
  attempt: number;
  /** What the previous attempt checkpointed, if anything. */
  checkpoint: Buffer;
  /** Aborted if the heartbeat found the lease lost, or the caller aborted. */
  signal: AbortSignal;
}

export interface RunOptions extends CallOptions {
  fingerprint: Uint8Array;
  /** Default 30000 ms; the heartbeat extends it every third of it. */
  leaseMs?: number;
  /** Default 30000 ms. */
  waitMs?: number;
  retentionMs?: number;
}

export type Work = (
  context: RunContext,
) => Promise<ResultInput | Uint8Array | string> | ResultInput | Uint8Array | string;

const RETRIED = new Set<number>([Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED]);
const OUTCOMES = new Map<BeginResponse_Outcome, Outcome>([
  [BeginResponse_Outcome.OUTCOME_ACQUIRED, "ACQUIRED"],
  [BeginResponse_Outcome.OUTCOME_COMPLETED, "COMPLETED"],
  [BeginResponse_Outcome.OUTCOME_IN_PROGRESS, "IN_PROGRESS"],
  [BeginResponse_Outcome.OUTCOME_MISMATCH, "MISMATCH"],
]);
const STATES = new Map<LookupResponse_State, KeyState>([
  [LookupResponse_State.STATE_ABSENT, "ABSENT"],
  [LookupResponse_State.STATE_IN_PROGRESS, "IN_PROGRESS"],
  [LookupResponse_State.STATE_COMPLETED, "COMPLETED"],
]);

function duration(ms: number): Duration {
  if (!Number.isFinite(ms) || ms < 0) {
    throw new RangeError(`a duration must be a finite number of ms >= 0, not ${ms}`);
  }
  const whole = Math.floor(ms / 1000);
  return { seconds: BigInt(whole), nanos: Math.round((ms - whole * 1000) * 1e6) };
}

function asBuffer(data: string | Uint8Array): Buffer {
  return typeof data === "string"
    ? Buffer.from(data, "utf8")
    : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

function toBuffer(data: Uint8Array | undefined): Buffer {
  if (data === undefined) return Buffer.alloc(0);
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

function toResult(message: ResultMessage | undefined, replayed: boolean): Result {
  return {
    code: message?.code ?? 0,
    body: toBuffer(message?.body),
    metadata: { ...(message?.metadata ?? {}) },
    replayed,
  };
}

function toResultMessage(result: ResultInput): ResultMessage {
  const body = result.body ?? Buffer.alloc(0);
  return {
    code: result.code ?? 0,
    body: asBuffer(body),
    metadata: { ...(result.metadata ?? {}) },
    completedAt: undefined,
  };
}

function validDate(date: Date | undefined): Date | undefined {
  return date === undefined || date.getTime() === 0 ? undefined : date;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(new Aborted(signal.reason));
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(new Aborted(signal?.reason));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

// The RPCs this client makes: [request, response].
interface Rpcs {
  begin: [BeginRequest, BeginResponse];
  complete: [CompleteRequest, CompleteResponse];
  release: [ReleaseRequest, ReleaseResponse];
  extend: [ExtendRequest, ExtendResponse];
  checkpoint: [CheckpointRequest, CheckpointResponse];
  lookup: [LookupRequest, LookupResponse];
}

type Unary<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: { deadline: Date },
  callback: (error: ServiceError | null, response: Res) => void,
) => { cancel(): void };

export class IdemClient {
  private readonly target: string;
  private readonly credentials: ChannelCredentials;
  private readonly channelOptions: ChannelOptions;
  private readonly bearerToken?: string;
  private readonly timeoutMs: number;
  private readonly attempts: number;
  private readonly totalTimeoutMs: number;
  private stub: IdempotencyClient;
  private replacedAt = 0;
  private closed = false;
  // Replaced channels, closed once the calls still on them are done.
  private readonly retiring = new Set<GrpcClient>();

  constructor(options: ClientOptions = {}) {
    this.target = options.target ?? "127.0.0.1:50051";
    this.timeoutMs = options.timeoutMs ?? 5000;
    this.attempts = options.attempts ?? 12;
    this.totalTimeoutMs = options.totalTimeoutMs ?? 20000;
    if (!(this.timeoutMs > 0) || !(this.totalTimeoutMs > 0) || !(this.attempts >= 1)) {
      throw new RangeError("timeoutMs and totalTimeoutMs must be > 0, attempts >= 1");
    }
    if (options.bearerToken !== undefined && options.tls === undefined) {
      // grpc-js refuses call credentials on an insecure channel; say so now.
      throw new RangeError("bearerToken needs tls: tokens are never sent in plaintext");
    }
    this.bearerToken = options.bearerToken;
    this.credentials =
      options.tls === undefined
        ? grpcCredentials.createInsecure()
        : grpcCredentials.createSsl(
            options.tls.ca === undefined ? null : Buffer.from(options.tls.ca),
            options.tls.key === undefined ? null : Buffer.from(options.tls.key),
            options.tls.cert === undefined ? null : Buffer.from(options.tls.cert),
          );
    this.channelOptions = {
      "grpc.initial_reconnect_backoff_ms": 100,
      "grpc.max_reconnect_backoff_ms": 2000,
      // A connection of its own, so that a replacement channel does not
      // inherit one waiting out its backoff.
      "grpc.use_local_subchannel_pool": 1,
      ...(options.tls?.serverName === undefined
        ? {}
        : { "grpc.ssl_target_name_override": options.tls.serverName }),
      ...options.channelOptions,
    };
    this.stub = this.connect();
  }

  private connect(): IdempotencyClient {
    return new IdempotencyClient(this.target, this.credentials, this.channelOptions);
  }

  private replaceChannel(): void {
    const now = Date.now();
    if (this.closed || now - this.replacedAt < 500) return;
    this.replacedAt = now;
    const old = this.stub;
    this.stub = this.connect();
    // Calls still running on the old channel finish first.
    this.retiring.add(old);
    setTimeout(() => {
      this.retiring.delete(old);
      old.close();
    }, this.timeoutMs + 1000).unref();
  }

  /** Closes the channels; calls still in flight fail. */
  close(): void {
    this.closed = true;
    this.stub.close();
    for (const old of this.retiring) old.close();
    this.retiring.clear();
  }

  private metadata(): Metadata {
    const metadata = new Metadata();
    if (this.bearerToken !== undefined) {
      metadata.set("authorization", `Bearer ${this.bearerToken}`);
    }
    return metadata;
  }

  private once<M extends keyof Rpcs>(
    name: M,
    request: Rpcs[M][0],
    timeoutMs: number,
    signal?: AbortSignal,
  ): Promise<Rpcs[M][1]> {
    return new Promise<Rpcs[M][1]>((resolve, reject) => {
      const stub = this.stub;
      const method = stub[name] as unknown as Unary<Rpcs[M][0], Rpcs[M][1]>;
      const onAbort = () => call.cancel();
      const call = method.call(
        stub,
        request,
        this.metadata(),
        { deadline: new Date(Date.now() + timeoutMs) },
        (error, response) => {
          signal?.removeEventListener("abort", onAbort);
          if (error !== null) reject(error);
          else resolve(response);
        },
      );
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  private async call<M extends keyof Rpcs>(
    name: M,
    request: Rpcs[M][0],
    signal: AbortSignal | undefined,
    extraMs = 0,
  ): Promise<Rpcs[M][1]> {
    const deadline = Date.now() + this.totalTimeoutMs + extraMs;
    let backoff = 100;
    for (let attempt = 1; ; attempt++) {
      if (signal?.aborted) throw new Aborted(signal.reason);
      if (this.closed) throw new IdemError("the client is closed", Status.CANCELLED);
      try {
        return await this.once(name, request, this.timeoutMs + extraMs, signal);
      } catch (error) {
        const failed = error as ServiceError;
        if (signal?.aborted) throw new Aborted(signal.reason);
        if (typeof failed.code !== "number") throw error;
        if (failed.code === Status.UNAVAILABLE) this.replaceChannel();
        if (
          !RETRIED.has(failed.code) ||
          attempt >= this.attempts ||
          Date.now() + backoff > deadline
        ) {
          throw fromStatus(failed.code, failed.details);
        }
      }
      // Half fixed, half random: the pauses add up to 7.5 s at least.
      await sleep(backoff / 2 + (Math.random() * backoff) / 2, signal);
      backoff = Math.min(backoff * 2, 2000);
    }
  }

  /**
   * Begins the key. Retries reuse one owner, so a Begin whose reply was
   * lost gets its own lease back instead of finding itself in progress.
   */
  async begin(namespace: string, key: string, options: BeginOptions = {}): Promise<BeginResult> {
    if (options.fingerprint !== undefined && options.request !== undefined) {
      throw new RangeError("pass fingerprint or request, not both");
    }
    const waitMs = options.waitMs ?? 0;
    const response = await this.call(
      "begin",
      {
        namespace,
        key,
        fingerprint: asBuffer(options.fingerprint ?? Buffer.alloc(0)),
        request: asBuffer(options.request ?? Buffer.alloc(0)),
        lease: options.leaseMs === undefined ? undefined : duration(options.leaseMs),
        retention: options.retentionMs === undefined ? undefined : duration(options.retentionMs),
        wait: waitMs > 0 ? duration(waitMs) : undefined,
        owner: options.owner || randomUUID().replace(/-/g, ""),
      },
      options.signal,
      waitMs,
    );
    const outcome = OUTCOMES.get(response.outcome);
    if (outcome === undefined) {
      throw new IdemError(`unknown Begin outcome ${response.outcome}`);
    }
    return {
      outcome,
      token: response.lease?.token ?? 0n,
      leaseExpiresAt: validDate(response.lease?.expiresAt),
      result: outcome === "COMPLETED" ? toResult(response.result, true) : undefined,
      attempt: response.attempt,
      checkpoint: toBuffer(response.checkpoint),
    };
  }

  /** Stores the result of the attempt holding `token`. */
  async complete(
    namespace: string,
    key: string,
    token: bigint,
    result: ResultInput,
    options: CallOptions & { retentionMs?: number } = {},
  ): Promise<void> {
    await this.call(
      "complete",
      {
        namespace,
        key,
        token,
        result: toResultMessage(result),
        retention: options.retentionMs === undefined ? undefined : duration(options.retentionMs),
      },
      options.signal,
    );
  }

  /** Gives the key up: the next Begin acquires it. */
  async release(namespace: string, key: string, token: bigint, options: CallOptions = {}): Promise<void> {
    await this.call("release", { namespace, key, token }, options.signal);
  }

  /** Extends the lease to `leaseMs` from now; returns the new expiry. */
  async extend(
    namespace: string,
    key: string,
    token: bigint,
    leaseMs: number,
    options: CallOptions = {},
  ): Promise<Date | undefined> {
    const response = await this.call(
      "extend",
      { namespace, key, token, lease: duration(leaseMs) },
      options.signal,
    );
    return validDate(response.expiresAt);
  }

  /** Records the holder's progress, for an attempt that takes over. */
  async checkpoint(
    namespace: string,
    key: string,
    token: bigint,
    checkpoint: Uint8Array,
    options: CallOptions = {},
  ): Promise<void> {
    await this.call("checkpoint", { namespace, key, token, checkpoint: asBuffer(checkpoint) }, options.signal);
  }

  /** The key's state, without changing it. */
  async lookup(namespace: string, key: string, options: CallOptions = {}): Promise<LookupResult> {
    const response = await this.call("lookup", { namespace, key }, options.signal);
    const state = STATES.get(response.state) ?? "ABSENT";
    return {
      state,
      leaseExpiresAt: validDate(response.lease?.expiresAt),
      result: state === "COMPLETED" ? toResult(response.result, true) : undefined,
      fingerprint: toBuffer(response.fingerprint),
      createdAt: validDate(response.createdAt),
      expiresAt: validDate(response.expiresAt),
      attempt: response.attempt,
      checkpoint: toBuffer(response.checkpoint),
    };
  }

  /**
   * Runs `work` at most once per key, or returns the stored result.
   *
   * Throws Mismatch (the key was used with another request), InProgress
   * (another attempt still holds it after `waitMs`), LeaseLost (this attempt
   * was taken over: its result is not stored), or what `work` threw (the
   * key is then released for a retry).
   */
  async run(namespace: string, key: string, work: Work, options: RunOptions): Promise<Result> {
    const leaseMs = options.leaseMs ?? 30000;
    const begun = await this.begin(namespace, key, {
      fingerprint: options.fingerprint,
      leaseMs,
      waitMs: options.waitMs ?? 30000,
      retentionMs: options.retentionMs,
      signal: options.signal,
    });
    switch (begun.outcome) {
      case "COMPLETED":
        return begun.result as Result;
      case "MISMATCH":
        throw new Mismatch(
          `idempotency key ${JSON.stringify(key)} was already used with a different request`,
          Status.FAILED_PRECONDITION,
        );
      case "IN_PROGRESS":
        throw new InProgress(
          `idempotency key ${JSON.stringify(key)} is in progress in another attempt`,
          Status.UNAVAILABLE,
        );
      default:
        break;
    }
    const lost = new AbortController();
    const onAbort = () => lost.abort(options.signal?.reason);
    options.signal?.addEventListener("abort", onAbort, { once: true });
    let leaseLost: LeaseLost | undefined;
    const heartbeat = setInterval(() => {
      this.extend(namespace, key, begun.token, leaseMs, { signal: lost.signal }).catch((error) => {
        if (error instanceof LeaseLost && !lost.signal.aborted) {
          leaseLost = error;
          lost.abort(error);
        }
        // Other failures: try again at the next beat; the lease may hold.
      });
    }, leaseMs / 3);
    const stop = () => {
      clearInterval(heartbeat);
      options.signal?.removeEventListener("abort", onAbort);
    };
    let produced: Awaited<ReturnType<Work>>;
    try {
      produced = await work({
        token: begun.token,
        attempt: begun.attempt,
        checkpoint: begun.checkpoint,
        signal: lost.signal,
      });
      if (
        typeof produced !== "string" &&
        !(produced instanceof Uint8Array) &&
        (typeof produced !== "object" || produced === null)
      ) {
        throw new TypeError(
          `the work must return a Result, a Uint8Array or a string, not ${produced === null ? "null" : typeof produced}`,
        );
      }
    } catch (error) {
      stop();
      await this.release(namespace, key, begun.token).catch(() => {
        // The lease lapses by itself.
      });
      throw error;
    }
    stop();
    if (leaseLost !== undefined) throw leaseLost;
    const result: ResultInput =
      typeof produced === "string" || produced instanceof Uint8Array
        ? { code: 0, body: produced }
        : produced;
    await this.complete(namespace, key, begun.token, result, {
      retentionMs: options.retentionMs,
    });
    return { ...toResult(toResultMessage(result), false) };
  }
}
