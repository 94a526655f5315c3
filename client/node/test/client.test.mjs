// IdemClient against the real idem-server: every RPC, the error mapping,
// run() under concurrency, heartbeats, and a server restart mid-run.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import {
  Aborted,
  AlreadyStored,
  IdemClient,
  IdemError,
  InProgress,
  LeaseLost,
  Mismatch,
  Unavailable,
  fingerprint,
  fingerprintParts,
  idempotentConsumer,
} from "@idem/client";

import { newKey, serverForTests } from "../testing/fixtures.mjs";
import { Server } from "../testing/server.mjs";


describe("IdemClient against idem-server", () => {
  const fixture = serverForTests();
  let client;
  before(() => {
    client = fixture.client;
  });

  test("begin, lookup, extend, checkpoint, release, complete, replay", async () => {
    const key = newKey("rpcs");
    const fp = fingerprint("request-1");
    const first = await client.begin("orders", key, { fingerprint: fp, leaseMs: 10000 });
    assert.equal(first.outcome, "ACQUIRED");
    assert.equal(typeof first.token, "bigint");
    assert.ok(first.token > 0n);
    assert.equal(first.attempt, 1);
    assert.ok(first.leaseExpiresAt instanceof Date);

    const busy = await client.begin("orders", key, { fingerprint: fp });
    assert.equal(busy.outcome, "IN_PROGRESS");
    assert.equal(busy.token, 0n);
    const other = await client.begin("orders", key, { fingerprint: fingerprint("another") });
    assert.equal(other.outcome, "MISMATCH");

    const seen = await client.lookup("orders", key);
    assert.equal(seen.state, "IN_PROGRESS");
    assert.deepEqual(seen.fingerprint, fp);

    const extended = await client.extend("orders", key, first.token, 60000);
    assert.ok(extended.getTime() > first.leaseExpiresAt.getTime());
    await client.checkpoint("orders", key, first.token, Buffer.from("step-2"));
    await client.release("orders", key, first.token);

    const second = await client.begin("orders", key, { fingerprint: fp });
    assert.equal(second.outcome, "ACQUIRED");
    assert.ok(second.token > first.token, "a new lease has a higher token");
    assert.equal(second.attempt, 2);
    assert.equal(second.checkpoint.toString(), "step-2");

    await client.complete("orders", key, second.token, {
      code: 201,
      body: '{"id":7}',
      metadata: { "content-type": "application/json" },
    });
    const replay = await client.begin("orders", key, { fingerprint: fp });
    assert.equal(replay.outcome, "COMPLETED");
    assert.equal(replay.result.code, 201);
    assert.equal(replay.result.body.toString(), '{"id":7}');
    assert.deepEqual(replay.result.metadata, { "content-type": "application/json" });
    assert.equal(replay.result.replayed, true);
    const done = await client.lookup("orders", key);
    assert.equal(done.state, "COMPLETED");
    assert.ok(done.expiresAt instanceof Date);
    assert.equal((await client.lookup("orders", newKey("never"))).state, "ABSENT");
  });

  test("the server fingerprints `request` itself", async () => {
    const key = newKey("request");
    const begun = await client.begin("orders", key, { request: Buffer.from("body") });
    assert.equal(begun.outcome, "ACQUIRED");
    const seen = await client.lookup("orders", key);
    assert.deepEqual(seen.fingerprint, fingerprint("body"));
  });

  test("errors map to their classes", async () => {
    const key = newKey("errors");
    const begun = await client.begin("orders", key, { fingerprint: fingerprint("x") });
    await client.complete("orders", key, begun.token, { code: 200, body: "a" });
    await assert.rejects(
      client.complete("orders", key, begun.token, { code: 200, body: "b" }),
      (error) => error instanceof AlreadyStored && error.code === 6,
    );
    await assert.rejects(
      client.complete("orders", key, begun.token + 1000n, { code: 200, body: "a" }),
      (error) => error instanceof LeaseLost && error.code === 9,
    );
    await assert.rejects(
      client.begin("", key),
      (error) =>
        error instanceof IdemError &&
        !(error instanceof Unavailable) &&
        error.code === 3 &&
        /namespace/.test(error.message),
    );
    await assert.rejects(client.begin("orders", key, { leaseMs: -1 }), RangeError);
    await assert.rejects(client.begin("orders", key, { leaseMs: Number.NaN }), RangeError);
    await assert.rejects(
      client.begin("orders", key, { fingerprint: fingerprint("a"), request: Buffer.from("a") }),
      RangeError,
    );
  });

  test("an AbortSignal cancels a waiting begin", async () => {
    const key = newKey("abort");
    await client.begin("orders", key, { fingerprint: fingerprint("x") });
    const controller = new AbortController();
    const waiting = client.begin("orders", key, {
      fingerprint: fingerprint("x"),
      waitMs: 20000,
      signal: controller.signal,
    });
    setTimeout(() => controller.abort(new Error("shutting down")), 200);
    const started = Date.now();
    await assert.rejects(waiting, (error) => error instanceof Aborted && error.code === 1);
    assert.ok(Date.now() - started < 5000);
  });

  test("8 concurrent runs of one key do the work once", async () => {
    const key = newKey("run");
    let runs = 0;
    const work = async () => {
      runs++;
      await sleep(300);
      return { code: 200, body: `charged once (${runs})` };
    };
    const results = await Promise.all(
      Array.from({ length: 8 }, () =>
        client.run("orders", key, work, { fingerprint: fingerprint("charge 10") }),
      ),
    );
    assert.equal(runs, 1);
    for (const result of results) assert.equal(result.body.toString(), "charged once (1)");
    assert.equal(results.filter((result) => !result.replayed).length, 1);
    await assert.rejects(
      client.run("orders", key, work, { fingerprint: fingerprint("charge 20") }),
      Mismatch,
    );
  });

  test("run releases the key when the work throws", async () => {
    const key = newKey("throws");
    await assert.rejects(
      client.run("orders", key, async () => {
        throw new Error("card declined");
      }, { fingerprint: fingerprint("x") }),
      /card declined/,
    );
    const retried = await client.run("orders", key, () => "ok", { fingerprint: fingerprint("x") });
    assert.equal(retried.body.toString(), "ok");
    assert.equal(retried.replayed, false);
  });

  test("the heartbeat keeps a short lease while the work runs", async () => {
    const key = newKey("heartbeat");
    let during;
    const result = await client.run(
      "orders",
      key,
      async (context) => {
        await sleep(3500); // Three and a half leases long.
        during = await client.begin("orders", key, { fingerprint: fingerprint("x") });
        assert.equal(context.signal.aborted, false);
        return "done";
      },
      { fingerprint: fingerprint("x"), leaseMs: 1000 },
    );
    assert.equal(during.outcome, "IN_PROGRESS");
    assert.equal(result.body.toString(), "done");
  });

  test("a second run waiting on the first gets its result, or InProgress", async () => {
    const key = newKey("wait");
    const slow = client.run("orders", key, async () => {
      await sleep(800);
      return "first";
    }, { fingerprint: fingerprint("x") });
    await sleep(100);
    const impatient = client.run("orders", key, () => "second", {
      fingerprint: fingerprint("x"),
      waitMs: 100,
    });
    await assert.rejects(impatient, InProgress);
    const patient = await client.run("orders", key, () => "second", { fingerprint: fingerprint("x") });
    assert.equal(patient.body.toString(), "first");
    assert.equal(patient.replayed, true);
    assert.equal((await slow).body.toString(), "first");
  });

  test("the consumer helper handles a message once", async () => {
    let handled = 0;
    const handle = idempotentConsumer(client, "events", { key: (m) => m.id }, async (m) => {
      handled++;
      return { charged: m.amount };
    });
    const message = { id: newKey("msg"), amount: 10 };
    const first = await handle(message);
    const again = await handle({ amount: 10, id: message.id }); // Same content.
    assert.deepEqual(first, { value: { charged: 10 }, duplicate: false });
    assert.deepEqual(again, { value: { charged: 10 }, duplicate: true });
    assert.equal(handled, 1);
    await assert.rejects(handle({ id: message.id, amount: 11 }), Mismatch);
  });
});

describe("failures", () => {
  test("an unreachable server is Unavailable once the retries run out", async () => {
    const client = new IdemClient({ target: "127.0.0.1:1", totalTimeoutMs: 1500, timeoutMs: 300 });
    const started = Date.now();
    await assert.rejects(client.lookup("orders", "k"), (error) => error instanceof Unavailable);
    assert.ok(Date.now() - started < 5000);
    client.close();
  });

  test("options that make no sense are refused at once", () => {
    assert.throws(() => new IdemClient({ timeoutMs: 0 }), RangeError);
    assert.throws(() => new IdemClient({ attempts: 0 }), RangeError);
    assert.throws(() => new IdemClient({ bearerToken: "t" }), /tls/);
  });

  test("a run rides out a server restart with default settings", async () => {
    const server = new Server();
    const client = new IdemClient({ target: await server.start() });
    try {
      const key = newKey("restart");
      let runs = 0;
      const result = await client.run("orders", key, async () => {
        runs++;
        await server.kill(); // kill -9 while the work runs...
        setTimeout(() => server.start(), 1500); // ...and back 1.5 s later.
        return "survived";
      }, { fingerprint: fingerprint("x") });
      assert.equal(result.body.toString(), "survived");
      assert.equal(runs, 1);
      const replay = await client.begin("orders", key, { fingerprint: fingerprint("x") });
      assert.equal(replay.outcome, "COMPLETED");
    } finally {
      client.close();
      await server.stop();
    }
  });
});

test("fingerprints are byte-identical to the other clients'", () => {
  // Vectors computed by the Python client (client/python/idem/fingerprint.py).
  assert.equal(
    fingerprint("hello").toString("hex"),
    "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
  );
  assert.equal(
    fingerprintParts("POST", "/v1/orders", '{"a":"é"}').toString("hex"),
    "79c9f1c29a55cc5c5dcb138f20055a2feb1f278e9c44682270604d5c4c800608",
  );
  assert.equal(
    fingerprintParts().toString("hex"),
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
  );
  assert.equal(
    fingerprintParts(Buffer.alloc(0), new Uint8Array([0x78])).toString("hex"),
    "6d6d0ffa8fe1fcf741ef439fdeb5af86467a300a86dfadd184a96775d57d78c3",
  );
});
