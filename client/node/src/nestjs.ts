// NestJS interceptor (NestJS on its default Express platform): the Express
// middleware's semantics for Nest controllers.
//
//   import { IdempotencyInterceptor } from "@idem/client/nestjs";
//   app.useGlobalInterceptors(new IdempotencyInterceptor({ namespace: "orders" }));
//   // or, per controller or route: @UseInterceptors(new IdempotencyInterceptor(...))
//
// Interceptors run after Nest's body parsing, guards and pipes: a request
// a guard refuses, or a pipe rejects (400), never holds a key. A replay or
// a problem answer (409, 422, 400) is given instead of the route's own
// answer, and the route does not run. needs rxjs (every Nest app has it).
import { from, mergeMap, type Observable, of } from "rxjs";

import { type HttpAnswer, type IdempotencyOptions, type Settings, settings } from "./http";
import { type Request, type Response, send, start } from "./express";

export { markNotExecuted } from "./express";
export type { IdempotencyOptions } from "./http";

/** The parts of Nest's ExecutionContext and CallHandler used here. */
export interface ExecutionContextLike {
  getType(): string;
  switchToHttp(): { getRequest(): unknown; getResponse(): unknown };
}
export interface CallHandlerLike {
  handle(): Observable<unknown>;
}

/**
 * Replaces whatever the framework answers next with `answer`: Nest still
 * writes its own reply for a route that did not run, and that reply is
 * swallowed here.
 */
function pin(res: Response, answer: HttpAnswer): void {
  const original = { write: res.write, end: res.end, writeHead: res.writeHead };
  res.writeHead = function writeHead(this: Response) {
    return this;
  } as Response["writeHead"];
  res.write = function write(): boolean {
    return true;
  } as Response["write"];
  res.end = function end(this: Response): Response {
    this.write = original.write;
    this.end = original.end;
    this.writeHead = original.writeHead;
    send(this, answer);
    return this;
  } as Response["end"];
}

export class IdempotencyInterceptor {
  private readonly s: Settings;

  constructor(options: IdempotencyOptions = {}) {
    this.s = settings(options);
  }

  intercept(context: ExecutionContextLike, next: CallHandlerLike): Observable<unknown> {
    if (context.getType() !== "http") return next.handle();
    const http = context.switchToHttp();
    const req = http.getRequest() as Request;
    const res = http.getResponse() as Response;
    if (typeof res.setHeader !== "function" || typeof req.rawHeaders !== "object") {
      throw new TypeError("IdempotencyInterceptor needs NestJS on its Express platform");
    }
    if (!this.s.methods.has((req.method ?? "").toUpperCase())) return next.handle();
    return from(start(this.s, req, res, pin)).pipe(
      mergeMap((step) => (step === "answered" ? of(undefined) : next.handle())),
    );
  }

  /** Closes the IdemClient the interceptor made (not one passed in). */
  close(): void {
    if (this.s.ownsClient) this.s.client.close();
  }
}
