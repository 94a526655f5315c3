// The Express middleware over real HTTP, on Express 4 and Express 5, against
// the real idem-server.
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { idempotency, markNotExecuted } from "@idem/client/express";

import { request, listen } from "../testing/http.mjs";
import { newKey as freshKey, serverForTests } from "../testing/fixtures.mjs";

const require = createRequire(import.meta.url);
const newKey = (name) => freshKey(name, { quoted: true });
const fixture = serverForTests();

for (const flavour of ["express4", "express"]) {
  describe(flavour, () => {
    const express = require(flavour);
    let app;
    let http;
    let port;
    const counts = new Map();
    const count = (name) => {
      counts.set(name, (counts.get(name) ?? 0) + 1);
      return counts.get(name);
    };
    let gate; // Resolved to let /slow finish.

    before(async () => {
      app = express();
      app.use("/json", express.json());
      // One middleware per prefix: a request goes through exactly one.
      app.use("/strict", idempotency({ client: fixture.client, namespace: `strict-${flavour}`, requireKey: true }));
      app.use("/waiting", idempotency({ client: fixture.client, namespace: `wait-${flavour}`, waitMs: 5000 }));
      const plain = idempotency({ client: fixture.client, namespace: `http-${flavour}` });
      app.use((req, res, next) =>
        req.path.startsWith("/strict/") || req.path.startsWith("/waiting/") ? next() : plain(req, res, next),
      );
      app.post("/orders", (req, res) => {
        const n = count("orders");
        res.status(201).set("x-order", `o-${n}`).json({ order: n, body: req.body.toString("utf8") });
      });
      app.post("/json/orders", (req, res) => {
        res.status(201).json({ order: count("json"), item: req.body.item });
      });
      app.post("/slow", async (req, res) => {
        count("slow");
        await gate;
        res.status(200).send("slow done");
      });
      app.post("/waiting/slow", async (req, res) => {
        count("waiting");
        await sleep(500);
        res.status(200).send("waited");
      });
      app.post("/throws", (req, res) => {
        if (count("throws") === 1) throw new Error("card declined");
        res.send("ok now");
      });
      app.post("/unavailable", (req, res) => {
        if (count("5xx") === 1) {
          res.status(503).send("try later");
          return;
        }
        res.send("ok now");
      });
      app.post("/stream", (req, res) => {
        count("stream");
        res.status(200).set("content-type", "application/octet-stream");
        const chunk = Buffer.alloc(10 * 1024, "x");
        for (let i = 0; i < 100; i++) res.write(chunk);
        res.end("end");
      });
      app.post("/after", (req, res, next) => {
        count("after");
        res.on("finish", () => next(new Error("cleanup failed after the response")));
        res.status(201).send("created");
      });
      app.post("/invalid", (req, res) => {
        count("invalid");
        markNotExecuted(req);
        res.status(400).send("fix the request");
      });
      app.post("/strict/x", (req, res) => res.send("strict ok"));
      app.get("/orders", (req, res) => res.send(`get ${count("get")}`));
      app.use((error, req, res, next) => {
        if (res.headersSent) {
          next(error); // After the response: Express's default handler.
          return;
        }
        res.status(500).send("server error");
      });
      http = await listen(app);
      port = http.port;
    });
    after(() => http.close());

    test("a retry gets the recorded response, replayed", async () => {
      const key = newKey("replay");
      const first = await request(port, "POST", "/orders", { headers: { "Idempotency-Key": key }, body: "a=1" });
      assert.equal(first.status, 201);
      const again = await request(port, "POST", "/orders", { headers: { "Idempotency-Key": key }, body: "a=1" });
      assert.equal(again.status, 201);
      assert.equal(again.body, first.body);
      assert.equal(again.headers["x-order"], first.headers["x-order"]);
      assert.equal(again.headers["content-type"], first.headers["content-type"]);
      assert.equal(again.headers["idempotent-replayed"], "true");
      assert.equal(first.headers["idempotent-replayed"], undefined);
      assert.deepEqual(JSON.parse(first.body), { order: counts.get("orders"), body: "a=1" });
    });

    test("a reused key with another request is 422; other methods pass", async () => {
      const key = newKey("mismatch");
      await request(port, "POST", "/orders", { headers: { "Idempotency-Key": key }, body: "a=1" });
      const other = await request(port, "POST", "/orders", { headers: { "Idempotency-Key": key }, body: "a=2" });
      assert.equal(other.status, 422);
      assert.equal(other.headers["content-type"], "application/problem+json");
      assert.equal(JSON.parse(other.body).status, 422);
      const got1 = await request(port, "GET", "/orders", { headers: { "Idempotency-Key": key } });
      const got2 = await request(port, "GET", "/orders", { headers: { "Idempotency-Key": key } });
      assert.notEqual(got1.body, got2.body); // GET is not idempotency-keyed.
    });

    test("a duplicate in flight gets 409 with Retry-After, or waits", async () => {
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

      const waitKey = newKey("wait");
      const a = request(port, "POST", "/waiting/slow", { headers: { "Idempotency-Key": waitKey } });
      await sleep(100);
      const b = await request(port, "POST", "/waiting/slow", { headers: { "Idempotency-Key": waitKey } });
      assert.equal(b.status, 200);
      assert.equal(b.body, "waited");
      assert.equal(b.headers["idempotent-replayed"], "true");
      assert.equal((await a).body, "waited");
      assert.equal(counts.get("waiting"), 1);
    });

    test("bad or missing keys are 400", async () => {
      for (const bad of ['"unterminated', "a b", '"a\\x"', "", `"${"k".repeat(256)}"`]) {
        const answer = await request(port, "POST", "/orders", { headers: { "Idempotency-Key": bad } });
        assert.equal(answer.status, 400, `key ${JSON.stringify(bad)}`);
        assert.equal(answer.headers["content-type"], "application/problem+json");
      }
      const two = await request(port, "POST", "/orders", { headers: { "Idempotency-Key": ['"a"', '"b"'] } });
      assert.equal(two.status, 400);
      assert.equal(JSON.parse(two.body).title, "More than one Idempotency-Key");
      const list = await request(port, "POST", "/orders", { headers: { "Idempotency-Key": '"a", "b"' } });
      assert.equal(list.status, 400);
      const missing = await request(port, "POST", "/strict/x");
      assert.equal(missing.status, 400);
      assert.equal(JSON.parse(missing.body).title, "Idempotency-Key is missing");
      const keyed = await request(port, "POST", "/strict/x", { headers: { "Idempotency-Key": newKey("s") } });
      assert.equal(keyed.body, "strict ok");
    });

    test("a handler that throws or answers 5xx releases the key", async () => {
      const key = newKey("throws");
      const failed = await request(port, "POST", "/throws", { headers: { "Idempotency-Key": key } });
      assert.equal(failed.status, 500);
      const retried = await request(port, "POST", "/throws", { headers: { "Idempotency-Key": key } });
      assert.equal(retried.body, "ok now");
      const key5 = newKey("5xx");
      assert.equal((await request(port, "POST", "/unavailable", { headers: { "Idempotency-Key": key5 } })).status, 503);
      assert.equal((await request(port, "POST", "/unavailable", { headers: { "Idempotency-Key": key5 } })).body, "ok now");
      const invalid = newKey("invalid");
      await request(port, "POST", "/invalid", { headers: { "Idempotency-Key": invalid } });
      await request(port, "POST", "/invalid", { headers: { "Idempotency-Key": invalid } });
      assert.equal(counts.get("invalid"), 2); // Marked not executed: released.
    });

    test("a streamed response is recorded whole", async () => {
      const key = newKey("stream");
      const first = await request(port, "POST", "/stream", { headers: { "Idempotency-Key": key } });
      assert.equal(first.body.length, 100 * 10 * 1024 + 3);
      const again = await request(port, "POST", "/stream", { headers: { "Idempotency-Key": key } });
      assert.equal(again.body, first.body);
      assert.equal(counts.get("stream"), 1);
    });

    test("a request body over maxBodyBytes is 413", async () => {
      const answer = await request(port, "POST", "/orders", {
        headers: { "Idempotency-Key": newKey("big") },
        body: Buffer.alloc((1 << 20) + 1, "y"),
      });
      assert.equal(answer.status, 413);
    });

    test("work after the response cannot undo it or run it again", async () => {
      const key = newKey("after");
      const first = await request(port, "POST", "/after", { headers: { "Idempotency-Key": key } });
      assert.equal(first.status, 201);
      await sleep(100);
      const again = await request(port, "POST", "/after", { headers: { "Idempotency-Key": key } });
      assert.equal(again.status, 201);
      assert.equal(again.body, "created");
      assert.equal(counts.get("after"), 1);
    });

    test("two callers with one key never see each other's response", async () => {
      const key = newKey("callers");
      const alice = await request(port, "POST", "/orders", {
        headers: { "Idempotency-Key": key, Authorization: "Bearer alice" },
        body: "same",
      });
      const bob = await request(port, "POST", "/orders", {
        headers: { "Idempotency-Key": key, Authorization: "Bearer bob" },
        body: "same",
      });
      assert.notEqual(alice.headers["x-order"], bob.headers["x-order"]);
      assert.equal(bob.headers["idempotent-replayed"], undefined);
      const aliceAgain = await request(port, "POST", "/orders", {
        headers: { "Idempotency-Key": key, Authorization: "Bearer alice" },
        body: "same",
      });
      assert.equal(aliceAgain.headers["x-order"], alice.headers["x-order"]);
    });

    test("after express.json(), the parsed body is the request", async () => {
      const key = newKey("json");
      const json = { "content-type": "application/json", "Idempotency-Key": key };
      const first = await request(port, "POST", "/json/orders", { headers: json, body: '{"item":"book","n":1}' });
      assert.equal(first.status, 201);
      const reordered = await request(port, "POST", "/json/orders", { headers: json, body: '{ "n": 1, "item": "book" }' });
      assert.equal(reordered.body, first.body);
      assert.equal(reordered.headers["idempotent-replayed"], "true");
      const other = await request(port, "POST", "/json/orders", { headers: json, body: '{"item":"pen","n":1}' });
      assert.equal(other.status, 422);
    });
  });
}

test("options that make no sense are refused", () => {
  assert.throws(() => idempotency({ client: fixture.client, leaseMs: 10 }), /leaseMs/);
  assert.throws(() => idempotency({ client: fixture.client, waitMs: -1 }), /waitMs/);
  assert.throws(() => idempotency({ client: fixture.client, header: "bad header" }), /header/);
  assert.throws(() => idempotency({ client: fixture.client, caller: () => "", keyFunc: () => "" }), /caller or keyFunc/);
  assert.throws(() => idempotency({ client: fixture.client, target: "x:1" }), /not both/);
});
