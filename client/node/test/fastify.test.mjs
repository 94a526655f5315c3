// The Fastify plugin over real HTTP, on Fastify 4 and Fastify 5, against
// the real idem-server. Fastify 5 needs Node.js 20 or newer.
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { Readable } from "node:stream";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { idempotency, markNotExecuted } from "@idem/client/fastify";

import { request } from "../testing/http.mjs";
import { newKey as freshKey, serverForTests } from "../testing/fixtures.mjs";

const require = createRequire(import.meta.url);
const nodeMajor = Number(process.versions.node.split(".")[0]);
const newKey = (name) => freshKey(name, { quoted: true });
const fixture = serverForTests();

for (const flavour of ["fastify4", "fastify"]) {
  const skip = flavour === "fastify" && nodeMajor < 20 ? "Fastify 5 needs Node.js 20+" : false;
  describe(flavour, { skip }, () => {
    let app;
    let port;
    const counts = new Map();
    const count = (name) => {
      counts.set(name, (counts.get(name) ?? 0) + 1);
      return counts.get(name);
    };
    let gate;

    before(async () => {
      const Fastify = require(flavour);
      app = Fastify();
      await app.register(idempotency, { client: fixture.client, namespace: `fastify-${flavour}` });
      app.post("/orders", async (req, reply) => {
        const n = count("orders");
        reply.code(201).header("x-order", `o-${n}`);
        return { order: n, item: req.body?.item ?? null };
      });
      app.post("/slow", async () => {
        count("slow");
        await gate;
        return "slow done";
      });
      app.post("/throws", async () => {
        if (count("throws") === 1) throw new Error("card declined");
        return "ok now";
      });
      app.post("/unavailable", async (req, reply) => {
        if (count("5xx") === 1) return reply.code(503).send("try later");
        return "ok now";
      });
      app.post("/stream", async (req, reply) => {
        count("stream");
        reply.header("content-type", "application/octet-stream");
        const chunks = Array.from({ length: 100 }, () => Buffer.alloc(10 * 1024, "x"));
        return reply.send(Readable.from([...chunks, Buffer.from("end")]));
      });
      app.post("/invalid", async (req, reply) => {
        count("invalid");
        markNotExecuted(req);
        return reply.code(400).send("fix the request");
      });
      // onResponse runs after the response went out: its failure is logged
      // by Fastify and cannot change what was recorded.
      app.register(async (scoped) => {
        scoped.addHook("onResponse", async () => {
          throw new Error("cleanup failed after the response");
        });
        scoped.post("/after", async (req, reply) => {
          count("after");
          return reply.code(201).send("created");
        });
      });
      await app.listen({ port: 0, host: "127.0.0.1" });
      port = app.server.address().port;
    });
    after(() => app.close());

    test("a retry gets the recorded response, replayed", async () => {
      const key = newKey("replay");
      const json = { "content-type": "application/json", "Idempotency-Key": key };
      const first = await request(port, "POST", "/orders", { headers: json, body: '{"item":"book","n":1}' });
      assert.equal(first.status, 201);
      const again = await request(port, "POST", "/orders", { headers: json, body: '{ "n": 1, "item": "book" }' });
      assert.equal(again.status, 201);
      assert.equal(again.body, first.body);
      assert.equal(again.headers["x-order"], first.headers["x-order"]);
      assert.equal(again.headers["content-type"], first.headers["content-type"]);
      assert.equal(again.headers["idempotent-replayed"], "true");
      const other = await request(port, "POST", "/orders", { headers: json, body: '{"item":"pen","n":1}' });
      assert.equal(other.status, 422);
      assert.equal(other.headers["content-type"], "application/problem+json");
    });

    test("a duplicate in flight gets 409 with Retry-After", async () => {
      const key = newKey("inflight");
      let open;
      gate = new Promise((resolve) => (open = resolve));
      const first = request(port, "POST", "/slow", { headers: { "Idempotency-Key": key } });
      await sleep(200);
      const busy = await request(port, "POST", "/slow", { headers: { "Idempotency-Key": key } });
      assert.equal(busy.status, 409);
      assert.ok(Number(busy.headers["retry-after"]) >= 1);
      open();
      assert.equal((await first).body, "slow done");
      assert.equal(counts.get("slow"), 1);
    });

    test("bad keys are 400", async () => {
      for (const bad of ['"unterminated', "a b", ['"a"', '"b"']]) {
        const answer = await request(port, "POST", "/orders", { headers: { "Idempotency-Key": bad } });
        assert.equal(answer.status, 400, `key ${JSON.stringify(bad)}`);
        assert.equal(answer.headers["content-type"], "application/problem+json");
      }
    });

    test("a handler that throws or answers 5xx releases the key", async () => {
      const key = newKey("throws");
      assert.equal((await request(port, "POST", "/throws", { headers: { "Idempotency-Key": key } })).status, 500);
      assert.equal((await request(port, "POST", "/throws", { headers: { "Idempotency-Key": key } })).body, "ok now");
      const key5 = newKey("5xx");
      assert.equal((await request(port, "POST", "/unavailable", { headers: { "Idempotency-Key": key5 } })).status, 503);
      assert.equal((await request(port, "POST", "/unavailable", { headers: { "Idempotency-Key": key5 } })).body, "ok now");
      const invalid = newKey("invalid");
      await request(port, "POST", "/invalid", { headers: { "Idempotency-Key": invalid } });
      await request(port, "POST", "/invalid", { headers: { "Idempotency-Key": invalid } });
      assert.equal(counts.get("invalid"), 2);
    });

    test("a streamed response is recorded whole", async () => {
      const key = newKey("stream");
      const first = await request(port, "POST", "/stream", { headers: { "Idempotency-Key": key } });
      assert.equal(first.body.length, 100 * 10 * 1024 + 3);
      const again = await request(port, "POST", "/stream", { headers: { "Idempotency-Key": key } });
      assert.equal(again.body, first.body);
      assert.equal(again.headers["idempotent-replayed"], "true");
      assert.equal(counts.get("stream"), 1);
    });

    test("a failing onResponse hook cannot undo the response or rerun it", async () => {
      const key = newKey("after");
      assert.equal((await request(port, "POST", "/after", { headers: { "Idempotency-Key": key } })).status, 201);
      await sleep(100);
      const again = await request(port, "POST", "/after", { headers: { "Idempotency-Key": key } });
      assert.equal(again.status, 201);
      assert.equal(again.body, "created");
      assert.equal(counts.get("after"), 1);
    });

    test("two callers with one key never see each other's response", async () => {
      const key = newKey("callers");
      const alice = await request(port, "POST", "/orders", { headers: { "Idempotency-Key": key, Authorization: "Bearer alice" } });
      const bob = await request(port, "POST", "/orders", { headers: { "Idempotency-Key": key, Authorization: "Bearer bob" } });
      assert.notEqual(alice.headers["x-order"], bob.headers["x-order"]);
      assert.equal(bob.headers["idempotent-replayed"], undefined);
    });

    test("inject() sees the same behaviour", async () => {
      const key = newKey("inject");
      const first = await app.inject({ method: "POST", url: "/orders", headers: { "Idempotency-Key": key } });
      const again = await app.inject({ method: "POST", url: "/orders", headers: { "Idempotency-Key": key } });
      assert.equal(again.body, first.body);
      assert.equal(again.headers["idempotent-replayed"], "true");
    });
  });
}
