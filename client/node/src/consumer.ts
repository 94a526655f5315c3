// Exactly-once message consumers (kafkajs, SQS, any queue): each message is
// handled at most once per message id, and a redelivered message gets the
// recorded result back instead of running the handler again.
//
//   const handle = idempotentConsumer(client, "payment-events", {
//     key: (event) => event.id,
//   }, async (event) => charge(event));
//   const { value, duplicate } = await handle(event);
import type { IdemClient } from "./client";
import { fingerprint } from "./fingerprint";

export interface ConsumerOutcome<T> {
  /** What the handler returned (JSON round-tripped on a duplicate). */
  value: T;
  /** True when the message had been handled before. */
  duplicate: boolean;
}

export interface ConsumerOptions<M> {
  /** The message id: the idempotency key. */
  key: (message: M) => string;
  /**
   * The bytes that identify the message's content (default: the message as
   * JSON with sorted object keys), so that a different message reusing an id
   * fails with Mismatch instead of being skipped.
   */
  payload?: (message: M) => string | Uint8Array;
  leaseMs?: number;
  waitMs?: number;
  retentionMs?: number;
}

/** JSON with object members sorted by name, at every depth. */
export function sortedJson(value: unknown): string {
  return JSON.stringify(value, (_key, inner: unknown) => {
    if (inner === null || typeof inner !== "object" || Array.isArray(inner)) return inner;
    if (Buffer.isBuffer(inner)) return inner;
    const sorted: Record<string, unknown> = {};
    for (const name of Object.keys(inner as object).sort()) {
      sorted[name] = (inner as Record<string, unknown>)[name];
    }
    return sorted;
  }) ?? "null";
}

/**
 * Wraps `handler(message)`. Its return value must be JSON-serializable: it
 * is what duplicates get back.
 */
export function idempotentConsumer<M, T>(
  client: IdemClient,
  namespace: string,
  options: ConsumerOptions<M>,
  handler: (message: M) => Promise<T> | T,
): (message: M, signal?: AbortSignal) => Promise<ConsumerOutcome<T>> {
  return async (message, signal) => {
    const content = options.payload ? options.payload(message) : sortedJson(message);
    const result = await client.run(
      namespace,
      options.key(message),
      async () => ({ code: 0, body: JSON.stringify((await handler(message)) ?? null) }),
      {
        fingerprint: fingerprint(content),
        leaseMs: options.leaseMs,
        waitMs: options.waitMs,
        retentionMs: options.retentionMs,
        signal,
      },
    );
    const text = result.body.toString("utf8");
    return { value: JSON.parse(text === "" ? "null" : text) as T, duplicate: result.replayed };
  };
}
