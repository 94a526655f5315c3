// The NestJS interceptor over real HTTP (NestJS 10 on its Express
// platform), against the real idem-server. Plain JavaScript: the
// decorators are applied as functions.
import "reflect-metadata";

import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { IdempotencyInterceptor, markNotExecuted } from "@idem/client/nestjs";

import { request } from "../testing/http.mjs";
import { newKey as freshKey, serverForTests } from "../testing/fixtures.mjs";

const require = createRequire(import.meta.url);
const { Body, Controller, HttpCode, Module, Post, Req, Res, UseInterceptors, BadRequestException } =
  require("@nestjs/common");
const { NestFactory } = require("@nestjs/core");

const newKey = (name) => freshKey(name, { quoted: true });
const counts = new Map();
const count = (name) => {
  counts.set(name, (counts.get(name) ?? 0) + 1);
  return counts.get(name);
};
let gate;

class OrdersController {
  create(body) {
    const n = count("orders");
    return { order: n, item: body.item ?? null };
  }
  async slow() {
    count("slow");
    await gate;
    return { done: true };
  }
  fails() {
    if (count("fails") === 1) throw new Error("card declined");
    return { ok: true };
  }
  validate(body, req) {
    count("validate");
    if (!body.item) {
      markNotExecuted(req);
      throw new BadRequestException("item is required");
    }
    return { ok: body.item };
  }
}

function decorate(target, name, decorators, params = []) {
  const descriptor = Object.getOwnPropertyDescriptor(target.prototype, name);
  for (const [index, param] of params.entries()) param(target.prototype, name, index);
  Reflect.defineMetadata("design:paramtypes", params.map(() => Object), target.prototype, name);
  for (const decorator of decorators.reverse()) decorator(target.prototype, name, descriptor);
  Object.defineProperty(target.prototype, name, descriptor);
}

const fixture = serverForTests();
let app;
let port;

before(async () => {
  await fixture.ready;
  decorate(OrdersController, "create", [Post()], [Body()]);
  decorate(OrdersController, "slow", [Post("slow"), HttpCode(200)]);
  decorate(OrdersController, "fails", [Post("fails")]);
  decorate(OrdersController, "validate", [Post("validate")], [Body(), Req()]);
  Controller("orders")(OrdersController);
  UseInterceptors(new IdempotencyInterceptor({ client: fixture.client, namespace: "nest" }))(OrdersController);
  class AppModule {}
  Module({ controllers: [OrdersController] })(AppModule);
  app = await NestFactory.create(AppModule, { logger: false });
  await app.listen(0, "127.0.0.1");
  port = app.getHttpServer().address().port;
});

after(() => app.close());

test("NestJS: replay, 422 and 409; the route runs once", async () => {
  const key = newKey("nest");
  const json = { "content-type": "application/json", "Idempotency-Key": key };
  const first = await request(port, "POST", "/orders", { headers: json, body: '{"item":"book"}' });
  assert.equal(first.status, 201);
  const again = await request(port, "POST", "/orders", { headers: json, body: '{"item":"book"}' });
  assert.equal(again.status, 201);
  assert.equal(again.body, first.body);
  assert.equal(again.headers["idempotent-replayed"], "true");
  assert.equal(counts.get("orders"), 1);
  const other = await request(port, "POST", "/orders", { headers: json, body: '{"item":"pen"}' });
  assert.equal(other.status, 422);
  assert.equal(other.headers["content-type"], "application/problem+json");

  const slowKey = newKey("slow");
  let open;
  gate = new Promise((resolve) => (open = resolve));
  const slow = request(port, "POST", "/orders/slow", { headers: { "Idempotency-Key": slowKey } });
  await sleep(200);
  const busy = await request(port, "POST", "/orders/slow", { headers: { "Idempotency-Key": slowKey } });
  assert.equal(busy.status, 409);
  open();
  assert.equal((await slow).status, 200);
  assert.equal(counts.get("slow"), 1);
});

test("NestJS: thrown errors release the key; bad keys are 400", async () => {
  const key = newKey("fails");
  assert.equal((await request(port, "POST", "/orders/fails", { headers: { "Idempotency-Key": key } })).status, 500);
  const retried = await request(port, "POST", "/orders/fails", { headers: { "Idempotency-Key": key } });
  assert.equal(retried.status, 201);
  assert.equal(counts.get("fails"), 2);
  const invalid = newKey("invalid");
  const json = { "content-type": "application/json", "Idempotency-Key": invalid };
  assert.equal((await request(port, "POST", "/orders/validate", { headers: json, body: "{}" })).status, 400);
  const fixed = await request(port, "POST", "/orders/validate", { headers: json, body: "{}" });
  assert.equal(fixed.status, 400); // Released, so it ran (and refused) again.
  assert.equal(counts.get("validate"), 2);
  const bad = await request(port, "POST", "/orders", { headers: { "Idempotency-Key": '"open' } });
  assert.equal(bad.status, 400);
  assert.equal(bad.headers["content-type"], "application/problem+json");
});
