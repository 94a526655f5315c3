// Express middleware (4.x and 5.x): requests with an Idempotency-Key run
// their handler at most once per key and caller; retries get the recorded
// response back with Idempotent-Replayed: true.
//
//   import { idempotency } from "@idem/client/express";
//   app.use(express.json());
//   app.use(idempotency({ target: "127.0.0.1:50051", namespace: "orders" }));
//
// Mount it after the body parsers: it fingerprints what they parsed (a
// Buffer or string as is, an object as JSON with sorted keys). Where no
// parser read the body, it reads it itself (up to maxBodyBytes, 413 beyond)
// and hands it on as a Buffer in req.body, as express.raw() would.
//
// The response is held until it is whole (res.end): then it is recorded
// (Complete), or the key released for a 5xx or a request marked not
// executed, and only then sent. Whatever the app does afterwards (a
// 'finish' listener, next(err) after the response) cannot change what was
// recorded or run the handler again. docs/http-middleware.md is the manual.
import type { IncomingMessage, ServerResponse } from "node:http";

import {
  type HttpAnswer,
  type HttpRequestInfo,
  type IdempotencyOptions,
  type Settings,
  beginStep,
  bodyTooLarge,
  groupedHeaders,
  headerPairs,
  heartbeat,
  keyStep,
  problem,
  settings,
  settleStep,
} from "./http";

export {
  DEFAULT_DOCS_URL,
  KeyProblem,
  authorizationCaller,
  parseIdempotencyKey,
  scopedKey,
  type HttpRequestInfo,
  type IdempotencyOptions,
} from "./http";

/** The parts of Express's request this middleware uses. */
export type Request = IncomingMessage & {
  body?: unknown;
  originalUrl?: string;
  _body?: boolean;
};
export type Response = ServerResponse;
export type NextFunction = (error?: unknown) => void;

export interface IdempotencyMiddleware {
  (req: Request, res: Response, next: NextFunction): void;
  /** Closes the IdemClient the middleware made (not one passed in). */
  close(): void;
}

const ATTEMPT = Symbol.for("idem.attempt");

interface Attempt {
  notExecuted: boolean;
}

/**
 * Says that this request was rejected before its handler ran (a validation
 * error), so that the middleware releases the key instead of recording the
 * response: the corrected request may reuse the key. Call it before the
 * response ends. False when the request holds no key.
 */
export function markNotExecuted(req: Request): boolean {
  const attempt = (req as unknown as Record<symbol, Attempt | undefined>)[ATTEMPT];
  if (attempt === undefined) return false;
  attempt.notExecuted = true;
  return true;
}

/** Gives `answer` as the whole response. */
export function send(res: Response, answer: HttpAnswer): void {
  if (res.headersSent || res.writableEnded) return;
  for (const name of res.getHeaderNames()) res.removeHeader(name);
  for (const [name, values] of groupedHeaders(answer.headers)) {
    res.setHeader(name, values.length === 1 ? values[0] : values);
  }
  res.setHeader("content-length", String(answer.body.length));
  res.statusCode = answer.status;
  res.end(answer.body);
}

/** The body as received, up to `limit` bytes; null beyond it, or if the client went away. */
function readBody(req: Request, limit: number): Promise<Buffer | "too-large" | null> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const finish = (value: Buffer | "too-large" | null) => {
      if (done) return;
      done = true;
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onClose);
      req.off("close", onClose);
      resolve(value);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        req.pause();
        finish("too-large");
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => finish(Buffer.concat(chunks));
    const onClose = () => finish(null);
    req.on("data", onData);
    req.once("end", onEnd);
    req.once("error", onClose);
    req.once("close", onClose);
  });
}

type Chunk = string | Uint8Array;

function toBuffer(chunk: unknown, encoding: unknown): Buffer | undefined {
  if (chunk === undefined || chunk === null || typeof chunk === "function") return undefined;
  if (typeof chunk === "string") {
    return Buffer.from(chunk, typeof encoding === "string" ? (encoding as BufferEncoding) : "utf8");
  }
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  throw new TypeError("a response chunk must be a string, Buffer or Uint8Array");
}

export function idempotency(options: IdempotencyOptions = {}): IdempotencyMiddleware {
  const s: Settings = settings(options);

  const middleware = (req: Request, res: Response, next: NextFunction): void => {
    if (!s.methods.has((req.method ?? "").toUpperCase())) {
      next();
      return;
    }
    start(s, req, res, send)
      .then((step) => {
        if (step !== "answered") next();
      })
      .catch(next);
  };
  return Object.assign(middleware, {
    close: () => {
      if (s.ownsClient) s.client.close();
    },
  });
}

/**
 * What start() did: "pass" (no key: run the handler as if the middleware
 * were not there), "answered" (a replay or a problem was given through
 * `answer`), "acquired" (the key is held: run the handler; its response is
 * held, recorded and sent by hold()).
 */
export type Step = "pass" | "answered" | "acquired";

/** The request side shared by the Express middleware and the NestJS interceptor. */
export async function start(
  s: Settings,
  req: Request,
  res: Response,
  send: (res: Response, answer: HttpAnswer) => void,
): Promise<Step> {
  const method = (req.method ?? "").toUpperCase();
  const info: HttpRequestInfo = { method, target: req.originalUrl ?? req.url ?? "/", headers: req.headers };
  const keyed = keyStep(s, info, req.rawHeaders);
  if (keyed.kind === "pass") return "pass";
  if (keyed.kind === "answer") {
    send(res, keyed.answer);
    return "answered";
  }

  // What the handler will see as the body, and what identifies the request.
  let body: unknown = req.body;
  if (!req._body && !req.readableEnded) {
    // No parser read it: read it here, and keep later parsers off the
    // drained stream (body-parser skips a request whose _body is set).
    const read = await readBody(req, s.maxBodyBytes);
    if (read === null) return "answered"; // The client went away mid-body.
    if (read === "too-large") {
      res.setHeader("connection", "close");
      send(res, bodyTooLarge(s));
      return "answered";
    }
    if (req.body === undefined) req.body = read;
    req._body = true;
    body = read;
  }
  const begun = await beginStep(s, keyed.idemKey, info, body);
  if (begun.kind === "answer") {
    send(res, begun.answer);
    return "answered";
  }
  hold(s, req, res, keyed.idemKey, begun.token);
  return "acquired";
}

/**
 * Holds the response of the request that acquired `idemKey` until it is
 * whole, then records it (or releases the key) and sends it.
 */
function hold(s: Settings, req: Request, res: Response, idemKey: string, token: bigint): void {
  const attempt: Attempt = { notExecuted: false };
  (req as unknown as Record<symbol, Attempt>)[ATTEMPT] = attempt;
  const beating = heartbeat(s, idemKey, token);

  const original = {
    write: res.write,
    end: res.end,
    writeHead: res.writeHead,
    flushHeaders: res.flushHeaders,
  };
  const chunks: Buffer[] = [];
  let settled = false;

  res.writeHead = function writeHead(this: Response, status: number, ...rest: unknown[]) {
    if (settled) return this;
    this.statusCode = status;
    const headers = rest.find((arg) => typeof arg === "object" && arg !== null);
    if (Array.isArray(headers)) {
      for (let i = 0; i + 1 < headers.length; i += 2) this.setHeader(String(headers[i]), String(headers[i + 1]));
    } else if (headers !== undefined) {
      for (const [name, value] of Object.entries(headers as Record<string, unknown>)) {
        if (value !== undefined) this.setHeader(name, value as string | string[]);
      }
    }
    return this;
  } as Response["writeHead"];
  res.flushHeaders = () => {};
  res.write = function write(this: Response, chunk: Chunk, ...rest: unknown[]): boolean {
    if (settled) return false;
    const buffer = toBuffer(chunk, rest[0]);
    if (buffer !== undefined) chunks.push(buffer);
    const callback = rest.find((arg) => typeof arg === "function") as (() => void) | undefined;
    if (callback !== undefined) process.nextTick(callback);
    return true;
  } as Response["write"];
  res.end = function end(this: Response, ...args: unknown[]): Response {
    if (settled) return this; // Nothing may follow the end.
    settled = true;
    const first = args[0];
    const buffer = typeof first === "function" ? undefined : toBuffer(first, args[1]);
    if (buffer !== undefined) chunks.push(buffer);
    const callback = args.find((arg) => typeof arg === "function") as (() => void) | undefined;
    clearInterval(beating);
    settle(this, callback).catch((error: unknown) => {
      // Never an unhandled rejection (it would end the process): the
      // caller learns the result was not recorded.
      const message = error instanceof Error ? error.message : String(error);
      flush(this, problem(s.docsUrl, 503, "Result not recorded", `the response could not be recorded: ${message}`), callback);
    });
    return this;
  } as Response["end"];

  const flush = (response: Response, answer: HttpAnswer, callback?: () => void) => {
    response.write = original.write;
    response.end = original.end;
    response.writeHead = original.writeHead;
    response.flushHeaders = original.flushHeaders;
    send(response, answer);
    if (callback !== undefined) response.once("finish", callback);
  };

  const settle = async (response: Response, callback?: () => void) => {
    const whole: HttpAnswer = {
      status: response.statusCode,
      headers: headerPairs(response.getHeaders()),
      body: Buffer.concat(chunks),
    };
    flush(response, await settleStep(s, idemKey, token, attempt.notExecuted, whole), callback);
  };
}
