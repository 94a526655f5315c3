// What every HTTP middleware of this package shares, framework-free: the
// Idempotency-Key header (draft-ietf-httpapi-idempotency-key-header), keys
// scoped per caller, request fingerprints, problem+json answers, and the
// options — the same semantics as the Python middleware
// (docs/http-middleware.md).
import { createHash } from "node:crypto";

import { IdemClient, type ClientOptions, type Result } from "./client";
import { sortedJson } from "./consumer";
import { IdemError } from "./errors";
import { fingerprintParts } from "./fingerprint";

export const DEFAULT_DOCS_URL =
  "https://datatracker.ietf.org/doc/draft-ietf-httpapi-idempotency-key-header/";
/** The server's key limit: printable ASCII, 1 to 255 bytes. */
export const MAX_KEY_LENGTH = 255;
/** Result metadata holding the response headers, as JSON [[name, value]...]. */
export const HEADERS_KEY = "http-headers";
const NOT_STORED = new Set(["content-length", "idempotent-replayed", "transfer-encoding", "connection"]);
const ANONYMOUS = "anonymous";

/** A request as the options' functions see it. */
export interface HttpRequestInfo {
  method: string;
  /** Path and query, as received. */
  target: string;
  headers: Record<string, string | string[] | undefined>;
}

export interface IdempotencyOptions {
  /** host:port of idem-server (default 127.0.0.1:50051); or `client`. */
  target?: string;
  /** An IdemClient to use (then `target` and `clientOptions` are unused). */
  client?: IdemClient;
  clientOptions?: ClientOptions;
  /** The Idem namespace of this API's keys (default "http"). */
  namespace?: string;
  /** The header carrying the key (default Idempotency-Key). */
  header?: string;
  /** Methods made idempotent (default POST, PUT, PATCH). */
  methods?: string[];
  /** Answer 400 to a request of those methods without the header. */
  requireKey?: boolean;
  /** Wait up to this many ms for an attempt in progress instead of 409. */
  waitMs?: number;
  /** The lease while the handler runs, in ms (default 30000; a heartbeat extends it). */
  leaseMs?: number;
  /** How long responses are kept, in ms (default: the server's, 24 h). */
  retentionMs?: number;
  /** Release the key instead of recording a 5xx (default true). */
  releaseOn5xx?: boolean;
  /** Larger request bodies get 413 (default 1 MiB). */
  maxBodyBytes?: number;
  /**
   * Who sends the request: keys are scoped per caller, so that one caller
   * never gets another's stored response. Default: the Authorization header.
   */
  caller?: (request: HttpRequestInfo) => string | undefined | null;
  /** Replaces the per-caller scoping altogether: the Idem key for `key`. */
  keyFunc?: (request: HttpRequestInfo, key: string) => string;
  /** The Link in problem answers. */
  docsUrl?: string;
}

export interface Settings {
  client: IdemClient;
  ownsClient: boolean;
  namespace: string;
  header: string;
  methods: Set<string>;
  requireKey: boolean;
  waitMs: number;
  leaseMs: number;
  retentionMs?: number;
  releaseOn5xx: boolean;
  maxBodyBytes: number;
  caller: (request: HttpRequestInfo) => string | undefined | null;
  keyFunc?: (request: HttpRequestInfo, key: string) => string;
  docsUrl: string;
}

function positive(name: string, value: number | undefined, fallback: number): number {
  const chosen = value ?? fallback;
  if (!Number.isFinite(chosen) || chosen < 0) {
    throw new RangeError(`${name} must be a finite number >= 0, not ${String(value)}`);
  }
  return chosen;
}

/** The options checked and filled in; throws on nonsense. */
export function settings(options: IdempotencyOptions = {}): Settings {
  if (options.caller !== undefined && options.keyFunc !== undefined) {
    throw new RangeError("pass caller or keyFunc, not both: keyFunc replaces the per-caller scoping");
  }
  if (options.client !== undefined && (options.target !== undefined || options.clientOptions !== undefined)) {
    throw new RangeError("pass client, or target/clientOptions, not both");
  }
  const header = (options.header ?? "Idempotency-Key").toLowerCase();
  if (!/^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(header)) {
    throw new RangeError(`header must be an HTTP field name, not ${JSON.stringify(options.header)}`);
  }
  const methods = new Set((options.methods ?? ["POST", "PUT", "PATCH"]).map((m) => m.toUpperCase()));
  const leaseMs = positive("leaseMs", options.leaseMs, 30000);
  if (leaseMs < 1000) throw new RangeError("leaseMs must be at least 1000 (the server's minimum)");
  const maxBodyBytes = positive("maxBodyBytes", options.maxBodyBytes, 1 << 20);
  return {
    client: options.client ?? new IdemClient({ ...options.clientOptions, target: options.target }),
    ownsClient: options.client === undefined,
    namespace: options.namespace ?? "http",
    header,
    methods,
    requireKey: options.requireKey ?? false,
    waitMs: positive("waitMs", options.waitMs, 0),
    leaseMs,
    retentionMs: options.retentionMs === undefined ? undefined : positive("retentionMs", options.retentionMs, 0),
    releaseOn5xx: options.releaseOn5xx ?? true,
    maxBodyBytes,
    caller: options.caller ?? authorizationCaller,
    keyFunc: options.keyFunc,
    docsUrl: options.docsUrl ?? DEFAULT_DOCS_URL,
  };
}

// --- The header -------------------------------------------------------------

/** The Idempotency-Key header is unusable; `title` names the problem. */
export class KeyProblem extends Error {
  constructor(
    readonly title: string,
    readonly detail: string,
  ) {
    super(detail);
    this.name = "KeyProblem";
  }
}

const INVALID = "Idempotency-Key is invalid";
const SEVERAL = "More than one Idempotency-Key";

function hex(code: number): string {
  return `0x${code.toString(16).toUpperCase().padStart(2, "0")}`;
}

function isTokenChar(c: string): boolean {
  return c >= "\x21" && c <= "\x7e" && !'"\\,;'.includes(c);
}

function parseSfString(value: string): [string, string] {
  let key = "";
  for (let i = 1; i < value.length; i++) {
    const c = value[i];
    if (c === "\\") {
      if (i + 1 === value.length) break; // Unterminated.
      const escaped = value[i + 1];
      if (escaped !== '"' && escaped !== "\\") {
        throw new KeyProblem(INVALID, `invalid escape \\${escaped} at position ${i}: only \\" and \\\\ are allowed`);
      }
      key += escaped;
      i++;
      continue;
    }
    if (c === '"') return [key, value.slice(i + 1)];
    if (c < " " || c > "~") {
      throw new KeyProblem(
        INVALID,
        `character ${hex(c.charCodeAt(0))} at position ${i} is not allowed: a key is printable ASCII (0x20-0x7E)`,
      );
    }
    key += c;
  }
  throw new KeyProblem(INVALID, "unterminated string: no closing double quote");
}

/**
 * The key in the Idempotency-Key field values (one per header line, as
 * received), or undefined when there is none. Throws KeyProblem.
 *
 * A value is an RFC 8941 sf-string ("abc"; \" and \\ are its only escapes)
 * or, for clients that do not quote, a plain token of visible ASCII without
 * ", \, "," and ";" (abc: the same key as "abc"), with optional whitespace.
 */
export function parseIdempotencyKey(values: string[]): string | undefined {
  if (values.length === 0) return undefined;
  if (values.length > 1) {
    throw new KeyProblem(
      SEVERAL,
      `the request has ${values.length} Idempotency-Key header fields; send exactly one key`,
    );
  }
  const value = values[0].replace(/^[ \t]+|[ \t]+$/g, "");
  if (value === "") throw new KeyProblem(INVALID, "the Idempotency-Key header is empty");
  let key: string;
  let rest: string;
  if (value[0] === '"') {
    [key, rest] = parseSfString(value);
  } else {
    let end = 0;
    while (end < value.length && isTokenChar(value[end])) end++;
    if (end === 0) {
      throw new KeyProblem(
        INVALID,
        `unexpected character ${hex(value.charCodeAt(0))} at position 0: send a quoted string ("...") or a plain token`,
      );
    }
    key = value.slice(0, end);
    rest = value.slice(end);
    if (rest !== "" && !" \t,".includes(rest[0])) {
      throw new KeyProblem(
        INVALID,
        `character ${hex(rest.charCodeAt(0))} at position ${end} is not allowed in an unquoted key`,
      );
    }
  }
  rest = rest.replace(/^[ \t]+/, "");
  if (rest.startsWith(",")) {
    throw new KeyProblem(
      SEVERAL,
      "the Idempotency-Key header holds a list (a comma outside quotes); send exactly one key",
    );
  }
  if (rest !== "") {
    throw new KeyProblem(
      INVALID,
      `unexpected characters at position ${value.length - rest.length}, after the key: send one quoted string or plain token and nothing else`,
    );
  }
  if (key === "") throw new KeyProblem(INVALID, "the key is empty");
  if (key.length > MAX_KEY_LENGTH) {
    throw new KeyProblem(INVALID, `the key has ${key.length} characters; the limit is ${MAX_KEY_LENGTH}`);
  }
  return key;
}

/**
 * The header's field values as received, one per line: Node joins repeated
 * unknown headers with ", ", so `rawHeaders` is read instead.
 */
export function fieldValues(rawHeaders: string[], name: string): string[] {
  const values: string[] = [];
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    if (rawHeaders[i].toLowerCase() === name) values.push(rawHeaders[i + 1]);
  }
  return values;
}

// --- Scoping keys per caller --------------------------------------------------

/** The default caller: the request's Authorization header, if any. */
export function authorizationCaller(request: HttpRequestInfo): string | undefined {
  const value = request.headers["authorization"];
  if (value === undefined) return undefined;
  return Array.isArray(value) ? value.join(", ") : value;
}

/**
 * The Idem key of the client's `key` sent by `principal`: the first 16 bytes
 * of SHA-256(principal) in hex (or "anonymous"), "/", and the key; when that
 * would exceed 255 bytes, the key part is "sha256:" and the key's hex
 * SHA-256. The same as the Python middleware's scoped_key.
 */
export function scopedKey(principal: string | undefined | null, key: string): string {
  const prefix =
    principal === undefined || principal === null || principal === ""
      ? ANONYMOUS
      : createHash("sha256").update(principal, "utf8").digest("hex").slice(0, 32);
  const scoped = `${prefix}/${key}`;
  if (scoped.length <= MAX_KEY_LENGTH) return scoped;
  return `${prefix}/sha256:${createHash("sha256").update(key, "latin1").digest("hex")}`;
}

// --- Fingerprints and bodies ----------------------------------------------------

/**
 * The request's fingerprint: method, target and body, where the body is the
 * bytes received, or what a body parser made of them (a string or Buffer as
 * is, a parsed object as JSON with sorted keys).
 */
export function requestFingerprint(method: string, target: string, body: unknown): Buffer {
  let bytes: Uint8Array;
  if (body === undefined || body === null) bytes = Buffer.alloc(0);
  else if (typeof body === "string") bytes = Buffer.from(body, "utf8");
  else if (body instanceof Uint8Array) bytes = body;
  else bytes = Buffer.from(sortedJson(body), "utf8");
  return fingerprintParts(method.toUpperCase(), target, bytes);
}

// --- Answers -------------------------------------------------------------------

export interface HttpAnswer {
  status: number;
  headers: [string, string][];
  body: Buffer;
}

/** An RFC 9457 problem about idempotency, with the Link the draft recommends. */
export function problem(
  docsUrl: string,
  status: number,
  title: string,
  detail: string,
  extraHeaders: [string, string][] = [],
): HttpAnswer {
  return {
    status,
    headers: [
      ["content-type", "application/problem+json"],
      ["link", `<${docsUrl}>; rel="describedby"; type="text/html"`],
      ...extraHeaders,
    ],
    body: Buffer.from(JSON.stringify({ type: docsUrl, title, status, detail }), "utf8"),
  };
}

export function missingKey(s: Settings): HttpAnswer {
  return problem(s.docsUrl, 400, "Idempotency-Key is missing", `this operation requires an ${s.header} header`);
}

export function bodyTooLarge(s: Settings): HttpAnswer {
  return problem(
    s.docsUrl,
    413,
    "Request body too large",
    `the request body is larger than this idempotent endpoint accepts (${s.maxBodyBytes} bytes)`,
  );
}

/** Whole seconds until the holder's lease lapses, rounded up, at least 1. */
export function retryAfter(leaseExpiresAt: Date | undefined): string {
  if (leaseExpiresAt === undefined) return "1";
  return String(Math.max(1, Math.ceil((leaseExpiresAt.getTime() - Date.now()) / 1000)));
}

/** A stored response, to send again with Idempotent-Replayed: true. */
export function replayed(result: Result): HttpAnswer {
  let pairs: [string, string][] = [];
  try {
    const parsed: unknown = JSON.parse(result.metadata[HEADERS_KEY] ?? "[]");
    if (Array.isArray(parsed)) {
      pairs = parsed.filter(
        (pair): pair is [string, string] =>
          Array.isArray(pair) && typeof pair[0] === "string" && typeof pair[1] === "string",
      );
    }
  } catch {
    // A result stored by something else: replay the body alone.
  }
  return {
    status: result.code >= 100 && result.code <= 999 ? result.code : 200,
    headers: [...pairs, ["idempotent-replayed", "true"]],
    body: result.body,
  };
}

/** A response's headers as name/value pairs, one per value. */
export function headerPairs(headers: Record<string, unknown>): [string, string][] {
  const pairs: [string, string][] = [];
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    for (const one of Array.isArray(value) ? value : [value]) pairs.push([name, String(one)]);
  }
  return pairs;
}

/** The headers of a response as stored with it. */
export function storedHeaders(headers: [string, string][]): string {
  return JSON.stringify(headers.filter(([name]) => !NOT_STORED.has(name.toLowerCase())));
}

/** The answer's headers, repeated names gathered (set-cookie). */
export function groupedHeaders(headers: [string, string][]): Map<string, string[]> {
  const grouped = new Map<string, string[]>();
  for (const [name, value] of headers) {
    const values = grouped.get(name.toLowerCase()) ?? [];
    values.push(value);
    grouped.set(name.toLowerCase(), values);
  }
  return grouped;
}

// --- The steps every adapter takes ------------------------------------------------

/** What the key header says: pass the request on untouched, answer it now, or use this Idem key. */
export type KeyStep = { kind: "pass" } | { kind: "answer"; answer: HttpAnswer } | { kind: "key"; idemKey: string };

export function keyStep(s: Settings, info: HttpRequestInfo, rawHeaders: string[]): KeyStep {
  let key: string | undefined;
  try {
    key = parseIdempotencyKey(fieldValues(rawHeaders, s.header));
  } catch (error) {
    if (!(error instanceof KeyProblem)) throw error;
    return { kind: "answer", answer: problem(s.docsUrl, 400, error.title, error.detail) };
  }
  if (key === undefined) return s.requireKey ? { kind: "answer", answer: missingKey(s) } : { kind: "pass" };
  return { kind: "key", idemKey: s.keyFunc !== undefined ? s.keyFunc(info, key) : scopedKey(s.caller(info), key) };
}

/** Begin's verdict: an answer to give (replay, 409, 422, 413, 400, 503), or the token of the key acquired. */
export type BeginStep = { kind: "answer"; answer: HttpAnswer } | { kind: "acquired"; token: bigint };

export async function beginStep(s: Settings, idemKey: string, info: HttpRequestInfo, body: unknown): Promise<BeginStep> {
  const size =
    typeof body === "string" ? Buffer.byteLength(body) : body instanceof Uint8Array ? body.byteLength : 0;
  if (size > s.maxBodyBytes) return { kind: "answer", answer: bodyTooLarge(s) };
  let begun;
  try {
    begun = await s.client.begin(s.namespace, idemKey, {
      fingerprint: requestFingerprint(info.method, info.target, body),
      leaseMs: s.leaseMs,
      retentionMs: s.retentionMs,
      waitMs: s.waitMs,
    });
  } catch (error) {
    if (!(error instanceof IdemError)) throw error;
    // INVALID_ARGUMENT, RESOURCE_EXHAUSTED: the key the server refused.
    const answer =
      error.code === 3 || error.code === 8
        ? problem(s.docsUrl, 400, "Idempotency-Key is invalid", `unusable idempotency key: ${error.message}`)
        : problem(s.docsUrl, 503, "Idempotency store unavailable", "the idempotency store is unavailable; retry later");
    return { kind: "answer", answer };
  }
  switch (begun.outcome) {
    case "ACQUIRED":
      return { kind: "acquired", token: begun.token };
    case "COMPLETED":
      return { kind: "answer", answer: replayed(begun.result as Result) };
    case "IN_PROGRESS":
      return {
        kind: "answer",
        answer: problem(
          s.docsUrl,
          409,
          "A request is outstanding for this Idempotency-Key",
          "a request with this idempotency key is being processed; retry after the time in Retry-After",
          [["retry-after", retryAfter(begun.leaseExpiresAt)]],
        ),
      };
    default:
      return {
        kind: "answer",
        answer: problem(
          s.docsUrl,
          422,
          "Idempotency-Key is already used",
          "this idempotency key was already used with a different request (method, target or body)",
        ),
      };
  }
}

/** Extends the lease every third of it until cleared. */
export function heartbeat(s: Settings, idemKey: string, token: bigint): NodeJS.Timeout {
  return setInterval(() => {
    s.client.extend(s.namespace, idemKey, token, s.leaseMs).catch(() => {
      // Completing will tell whether the lease held.
    });
  }, s.leaseMs / 3);
}

/**
 * Settles the key with the handler's whole response: records it (Complete),
 * or releases the key for a 5xx or a request marked not executed. Returns
 * what to send: the response itself, or a 503 problem when it could not be
 * recorded (the work is done but a retry would not find it: say so rather
 * than pretend).
 */
export async function settleStep(
  s: Settings,
  idemKey: string,
  token: bigint,
  notExecuted: boolean,
  response: HttpAnswer,
): Promise<HttpAnswer> {
  if (notExecuted || (response.status >= 500 && s.releaseOn5xx)) {
    await s.client.release(s.namespace, idemKey, token).catch(() => {
      // The lease lapses by itself.
    });
    return response;
  }
  try {
    await s.client.complete(
      s.namespace,
      idemKey,
      token,
      { code: response.status, body: response.body, metadata: { [HEADERS_KEY]: storedHeaders(response.headers) } },
      { retentionMs: s.retentionMs },
    );
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    return problem(s.docsUrl, 503, "Result not recorded", `the request ran but its result could not be stored: ${message}`);
  }
  return response;
}
