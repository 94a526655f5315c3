// Fastify plugin (4.x and 5.x): the Express middleware's semantics for
// Fastify routes.
//
//   import { idempotency } from "@idem/client/fastify";
//   await app.register(idempotency, { target: "127.0.0.1:50051", namespace: "orders" });
//
// It applies to every route of the instance it is registered on (it is not
// encapsulated, like a fastify-plugin). The key is begun in a preHandler
// hook, after Fastify parsed the body (so a parsed object is fingerprinted
// as JSON with sorted keys, a string or Buffer as is); the response is
// recorded in an onSend hook, when its payload is final (a stream is read
// whole first), and only then sent: onResponse hooks and anything later
// cannot change it or run the handler again.
import type { Readable } from "node:stream";

import { IdemError } from "./errors";
import {
  type HttpAnswer,
  type HttpRequestInfo,
  type IdempotencyOptions,
  KeyProblem,
  type Settings,
  bodyTooLarge,
  fieldValues,
  missingKey,
  parseIdempotencyKey,
  problem,
  replayed,
  requestFingerprint,
  retryAfter,
  scopedKey,
  settings,
  storedHeaders,
} from "./http";

export type { IdempotencyOptions } from "./http";

/** The parts of Fastify's request and reply used here. */
export interface FastifyRequestLike {
  method: string;
  url: string;
  body?: unknown;
  headers: Record<string, string | string[] | undefined>;
  raw: { rawHeaders: string[] };
}
export interface FastifyReplyLike {
  statusCode: number;
  code(status: number): FastifyReplyLike;
  header(name: string, value: unknown): FastifyReplyLike;
  removeHeader(name: string): FastifyReplyLike;
  getHeaders(): Record<string, unknown>;
  send(payload?: unknown): FastifyReplyLike;
}
export interface FastifyInstanceLike {
  addHook(name: string, hook: (...args: never[]) => unknown): unknown;
}

const ATTEMPT = Symbol.for("idem.attempt");

interface Attempt {
  key: string;
  token: bigint;
  heartbeat: NodeJS.Timeout;
  notExecuted: boolean;
  settled: boolean;
}

type WithAttempt = { [ATTEMPT]?: Attempt };

/**
 * Says that this request was rejected before its handler did the work, so
 * that the key is released instead of the response recorded. False when
 * the request holds no key.
 */
export function markNotExecuted(request: FastifyRequestLike): boolean {
  const attempt = (request as WithAttempt)[ATTEMPT];
  if (attempt === undefined) return false;
  attempt.notExecuted = true;
  return true;
}

function give(reply: FastifyReplyLike, answer: HttpAnswer): FastifyReplyLike {
  const grouped = new Map<string, string[]>();
  for (const [name, value] of answer.headers) {
    const values = grouped.get(name.toLowerCase()) ?? [];
    values.push(value);
    grouped.set(name.toLowerCase(), values);
  }
  reply.code(answer.status);
  for (const [name, values] of grouped) reply.header(name, values.length === 1 ? values[0] : values);
  return reply.send(answer.body);
}

async function payloadBytes(payload: unknown): Promise<Buffer> {
  if (payload === undefined || payload === null) return Buffer.alloc(0);
  if (typeof payload === "string") return Buffer.from(payload, "utf8");
  if (payload instanceof Uint8Array) return Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  if (typeof (payload as Readable)[Symbol.asyncIterator] === "function") {
    const chunks: Buffer[] = [];
    for await (const chunk of payload as Readable) {
      chunks.push(typeof chunk === "string" ? Buffer.from(chunk, "utf8") : Buffer.from(chunk as Uint8Array));
    }
    return Buffer.concat(chunks);
  }
  return Buffer.from(String(payload), "utf8");
}

function headerPairs(reply: FastifyReplyLike): [string, string][] {
  const pairs: [string, string][] = [];
  for (const [name, value] of Object.entries(reply.getHeaders())) {
    if (value === undefined) continue;
    for (const one of Array.isArray(value) ? value : [value]) pairs.push([name, String(one)]);
  }
  return pairs;
}

async function preHandler(s: Settings, request: FastifyRequestLike, reply: FastifyReplyLike): Promise<unknown> {
  const method = request.method.toUpperCase();
  if (!s.methods.has(method)) return undefined;
  let key: string | undefined;
  try {
    key = parseIdempotencyKey(fieldValues(request.raw.rawHeaders, s.header));
  } catch (error) {
    if (!(error instanceof KeyProblem)) throw error;
    return give(reply, problem(s.docsUrl, 400, error.title, error.detail));
  }
  if (key === undefined) return s.requireKey ? give(reply, missingKey(s)) : undefined;
  const info: HttpRequestInfo = { method, target: request.url, headers: request.headers };
  const idemKey = s.keyFunc !== undefined ? s.keyFunc(info, key) : scopedKey(s.caller(info), key);
  const body = request.body;
  const size =
    typeof body === "string" ? Buffer.byteLength(body) : body instanceof Uint8Array ? body.byteLength : 0;
  if (size > s.maxBodyBytes) return give(reply, bodyTooLarge(s));
  let begun;
  try {
    begun = await s.client.begin(s.namespace, idemKey, {
      fingerprint: requestFingerprint(method, request.url, body),
      leaseMs: s.leaseMs,
      retentionMs: s.retentionMs,
      waitMs: s.waitMs,
    });
  } catch (error) {
    if (!(error instanceof IdemError)) throw error;
    if (error.code === 3 || error.code === 8) {
      return give(reply, problem(s.docsUrl, 400, "Idempotency-Key is invalid", `unusable idempotency key: ${error.message}`));
    }
    return give(reply, problem(s.docsUrl, 503, "Idempotency store unavailable", "the idempotency store is unavailable; retry later"));
  }
  switch (begun.outcome) {
    case "COMPLETED":
      return give(reply, replayed(begun.result!));
    case "IN_PROGRESS":
      return give(
        reply,
        problem(
          s.docsUrl,
          409,
          "A request is outstanding for this Idempotency-Key",
          "a request with this idempotency key is being processed; retry after the time in Retry-After",
          [["retry-after", retryAfter(begun.leaseExpiresAt)]],
        ),
      );
    case "MISMATCH":
      return give(
        reply,
        problem(
          s.docsUrl,
          422,
          "Idempotency-Key is already used",
          "this idempotency key was already used with a different request (method, target or body)",
        ),
      );
    default:
      break;
  }
  const token = begun.token;
  (request as WithAttempt)[ATTEMPT] = {
    key: idemKey,
    token,
    notExecuted: false,
    settled: false,
    heartbeat: setInterval(() => {
      s.client.extend(s.namespace, idemKey, token, s.leaseMs).catch(() => {
        // Completing will tell whether the lease held.
      });
    }, s.leaseMs / 3),
  };
  return undefined;
}

async function onSend(
  s: Settings,
  request: FastifyRequestLike,
  reply: FastifyReplyLike,
  payload: unknown,
): Promise<unknown> {
  const attempt = (request as WithAttempt)[ATTEMPT];
  if (attempt === undefined || attempt.settled) return payload;
  attempt.settled = true;
  clearInterval(attempt.heartbeat);
  const body = await payloadBytes(payload);
  const status = reply.statusCode;
  if (attempt.notExecuted || (status >= 500 && s.releaseOn5xx)) {
    await s.client.release(s.namespace, attempt.key, attempt.token).catch(() => {
      // The lease lapses by itself.
    });
    return body;
  }
  try {
    await s.client.complete(
      s.namespace,
      attempt.key,
      attempt.token,
      { code: status, body, metadata: { "http-headers": storedHeaders(headerPairs(reply)) } },
      { retentionMs: s.retentionMs },
    );
  } catch (error) {
    // The work is done but its result is not stored: say so.
    const message = error instanceof Error ? error.message : String(error);
    const answer = problem(
      s.docsUrl,
      503,
      "Result not recorded",
      `the request ran but its result could not be stored: ${message}`,
    );
    for (const name of Object.keys(reply.getHeaders())) reply.removeHeader(name);
    reply.code(503);
    for (const [name, value] of answer.headers) reply.header(name, value);
    return answer.body;
  }
  return body;
}

/** The plugin: register it with the options (IdempotencyOptions). */
export const idempotency = Object.assign(
  async function idempotency(instance: FastifyInstanceLike, options: IdempotencyOptions = {}): Promise<void> {
    const s = settings(options);
    instance.addHook("preHandler", ((request: FastifyRequestLike, reply: FastifyReplyLike) =>
      preHandler(s, request, reply)) as (...args: never[]) => unknown);
    instance.addHook("onSend", ((request: FastifyRequestLike, reply: FastifyReplyLike, payload: unknown) =>
      onSend(s, request, reply, payload)) as (...args: never[]) => unknown);
    // A request that ends without a response (the client went away and the
    // handler failed) stops its heartbeat; the lease then lapses.
    instance.addHook("onResponse", ((request: FastifyRequestLike) => {
      const attempt = (request as WithAttempt)[ATTEMPT];
      if (attempt !== undefined) clearInterval(attempt.heartbeat);
      return Promise.resolve();
    }) as (...args: never[]) => unknown);
    instance.addHook("onClose", (() => {
      if (s.ownsClient) s.client.close();
      return Promise.resolve();
    }) as (...args: never[]) => unknown);
  },
  // Not encapsulated: the hooks apply to the routes of the instance it is
  // registered on (what fastify-plugin does).
  { [Symbol.for("skip-override")]: true, [Symbol.for("fastify.display-name")]: "@idem/client/fastify" },
);
