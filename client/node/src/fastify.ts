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

import {
  type HttpAnswer,
  type HttpRequestInfo,
  type IdempotencyOptions,
  type Settings,
  beginStep,
  groupedHeaders,
  headerPairs,
  heartbeat,
  keyStep,
  settings,
  settleStep,
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
  reply.code(answer.status);
  for (const [name, values] of groupedHeaders(answer.headers)) {
    reply.header(name, values.length === 1 ? values[0] : values);
  }
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

async function preHandler(s: Settings, request: FastifyRequestLike, reply: FastifyReplyLike): Promise<unknown> {
  const method = request.method.toUpperCase();
  if (!s.methods.has(method)) return undefined;
  const info: HttpRequestInfo = { method, target: request.url, headers: request.headers };
  const keyed = keyStep(s, info, request.raw.rawHeaders);
  if (keyed.kind === "pass") return undefined;
  if (keyed.kind === "answer") return give(reply, keyed.answer);
  const begun = await beginStep(s, keyed.idemKey, info, request.body);
  if (begun.kind === "answer") return give(reply, begun.answer);
  (request as WithAttempt)[ATTEMPT] = {
    key: keyed.idemKey,
    token: begun.token,
    notExecuted: false,
    settled: false,
    heartbeat: heartbeat(s, keyed.idemKey, begun.token),
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
  const whole: HttpAnswer = { status: reply.statusCode, headers: headerPairs(reply.getHeaders()), body: await payloadBytes(payload) };
  const answer = await settleStep(s, attempt.key, attempt.token, attempt.notExecuted, whole);
  if (answer === whole) return whole.body;
  // Not recorded: the problem replaces the response.
  for (const name of Object.keys(reply.getHeaders())) reply.removeHeader(name);
  reply.code(answer.status);
  for (const [name, value] of answer.headers) reply.header(name, value);
  return answer.body;
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
