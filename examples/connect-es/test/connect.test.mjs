// connect-es against the real idem-server's Connect port (--http-listen),
// over HTTP/1.1, with JSON and with binary bodies: the path of a key,
// Idem's status codes as Connect codes, Lookup and Admin reads as GET, a
// waiting Begin, and the example script. ctest names the server binary in
// IDEM_SERVER_BINARY and the idem.v1 descriptor set in IDEM_DESCRIPTOR_SET.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import http from "node:http";
import { dirname, join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema, MethodOptions_IdempotencyLevel, durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";

import { Server } from "../../../client/node/testing/server.mjs";

const packageDir = join(dirname(fileURLToPath(import.meta.url)), "..");
const descriptorSet = process.env.IDEM_DESCRIPTOR_SET;
if (!descriptorSet) {
  throw new Error(
    "IDEM_DESCRIPTOR_SET must name a descriptor set of proto/idem/v1 (ctest sets it; by hand: " +
      "protoc -I proto --include_imports --descriptor_set_out=/tmp/idem.binpb " +
      "idem/v1/idempotency.proto idem/v1/admin.proto)",
  );
}
const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(descriptorSet)));
const Idempotency = registry.getService("idem.v1.Idempotency");
const Admin = registry.getService("idem.v1.Admin");
const Outcome = registry.getEnum("idem.v1.BeginResponse.Outcome");
const State = registry.getEnum("idem.v1.LookupResponse.State");
const outcome = (response) => Outcome.value[response.outcome].name.replace("OUTCOME_", "");
const state = (response) => State.value[response.state].name.replace("STATE_", "");

const fingerprint = (text) => createHash("sha256").update(text).digest();
const newKey = (name) => `${name}-${randomUUID()}`;
const bytes = (text) => new TextEncoder().encode(text);
const text = (data) => new TextDecoder().decode(data);

async function assertCode(call, code, message = /./) {
  await assert.rejects(call, (error) => {
    assert.ok(error instanceof ConnectError, `not a ConnectError: ${error}`);
    assert.equal(Code[error.code], Code[code], error.rawMessage);
    assert.match(error.rawMessage, message);
    return true;
  });
}

const server = new Server(["--http-listen=127.0.0.1:0"]);
let baseUrl;
before(async () => {
  await server.start();
  assert.ok(server.httpPort > 0, "no http= line in the port file: does idem-server know --http-listen?");
  baseUrl = `http://127.0.0.1:${server.httpPort}`;
});
after(() => server.stop());

for (const [format, useBinaryFormat, contentType] of [
  ["JSON", false, "application/json"],
  ["binary", true, "application/proto"],
]) {
  describe(`Connect with ${format} bodies`, () => {
    const answeredAs = new Set(); // Content types of the successful answers.
    const client = () =>
      createClient(
        Idempotency,
        createConnectTransport({
          baseUrl,
          httpVersion: "1.1",
          useBinaryFormat,
          interceptors: [
            (next) => async (request) => {
              const response = await next(request);
              answeredAs.add(response.header.get("content-type"));
              return response;
            },
          ],
        }),
      );

    after(() => assert.deepEqual([...answeredAs], [contentType]));

    test("Begin, Complete, replay and Lookup", async () => {
      const idem = client();
      const key = newKey("path");
      const request = { namespace: "orders", key, fingerprint: fingerprint("order-1"), lease: durationFromMs(30_000) };
      const first = await idem.begin(request);
      assert.equal(outcome(first), "ACQUIRED");
      assert.ok(first.lease.token > 0n);
      assert.equal(first.attempt, 1);
      assert.ok(first.lease.expiresAt.seconds > 0n);

      const busy = await idem.begin(request);
      assert.equal(outcome(busy), "IN_PROGRESS");
      assert.equal(busy.lease.token, 0n, "the holder's token is never revealed");
      const running = await idem.lookup({ namespace: "orders", key });
      assert.equal(state(running), "IN_PROGRESS");
      assert.deepEqual(running.fingerprint, new Uint8Array(request.fingerprint));

      const result = { code: 201, body: bytes('{"id":7}'), metadata: { "content-type": "application/json" } };
      const stored = await idem.complete({ namespace: "orders", key, token: first.lease.token, result });
      assert.ok(stored.completedAt.seconds > 0n);

      const replay = await idem.begin(request);
      assert.equal(outcome(replay), "COMPLETED");
      assert.equal(replay.result.code, 201);
      assert.equal(text(replay.result.body), '{"id":7}');
      assert.deepEqual(replay.result.metadata, { "content-type": "application/json" });
      assert.ok(replay.expiresAt.seconds > stored.completedAt.seconds);

      const done = await idem.lookup({ namespace: "orders", key });
      assert.equal(state(done), "COMPLETED");
      assert.equal(text(done.result.body), '{"id":7}');
      assert.equal(state(await idem.lookup({ namespace: "orders", key: newKey("never") })), "ABSENT");
    });

    test("a different fingerprint is MISMATCH: an outcome, not an error", async () => {
      const idem = client();
      const key = newKey("mismatch");
      assert.equal(outcome(await idem.begin({ namespace: "orders", key, fingerprint: fingerprint("a") })), "ACQUIRED");
      const other = await idem.begin({ namespace: "orders", key, fingerprint: fingerprint("b") });
      assert.equal(outcome(other), "MISMATCH");
      assert.equal(other.result, undefined, "nothing of the key is revealed");
    });

    test("Idem's status codes arrive as the same Connect codes", async () => {
      const idem = client();
      const key = newKey("codes");
      const first = await idem.begin({ namespace: "orders", key, fingerprint: fingerprint("x") });
      const token = first.lease.token;
      await idem.complete({ namespace: "orders", key, token, result: { code: 200, body: bytes("one") } });
      await assertCode(
        idem.complete({ namespace: "orders", key, token, result: { code: 200, body: bytes("two") } }),
        Code.AlreadyExists,
      );

      const released = newKey("released");
      const lease = await idem.begin({ namespace: "orders", key: released });
      await idem.release({ namespace: "orders", key: released, token: lease.lease.token });
      await assertCode(
        idem.complete({ namespace: "orders", key: released, token: lease.lease.token, result: { code: 200 } }),
        Code.FailedPrecondition,
        /^lease lost:/,
      );

      await assertCode(idem.begin({ namespace: "", key }), Code.InvalidArgument);
      await assertCode(
        idem.begin({ namespace: "orders", key: newKey("both"), fingerprint: fingerprint("x"), request: bytes("x") }),
        Code.InvalidArgument,
      );
    });

    test("a Begin that waits is answered by the Complete of the holder", async () => {
      const idem = client();
      const key = newKey("wait");
      const request = { namespace: "orders", key, fingerprint: fingerprint("slow") };
      const holder = await idem.begin({ ...request, lease: durationFromMs(30_000) });
      assert.equal(outcome(holder), "ACQUIRED");

      let answered = false;
      const waiter = idem.begin({ ...request, wait: durationFromMs(20_000) });
      waiter.then(() => (answered = true)).catch(() => {}); // Awaited below.
      await sleep(300);
      assert.equal(answered, false, "the waiting Begin answered before the Complete");

      const completedAt = Date.now();
      await idem.complete({ namespace: "orders", key, token: holder.lease.token, result: { code: 200, body: bytes("done") } });
      const woken = await waiter;
      assert.ok(Date.now() - completedAt < 5000, "the waiter was not woken by the Complete");
      assert.equal(outcome(woken), "COMPLETED");
      assert.equal(text(woken.result.body), "done");
    });
  });
}

// Forwards to the server's HTTP port and notes each request's method and
// target, to see what connect-es puts on the wire.
async function startRecordingProxy(port) {
  const seen = [];
  const proxy = http.createServer((incoming, outgoing) => {
    seen.push(`${incoming.method} ${incoming.url}`);
    const upstream = http.request(
      { host: "127.0.0.1", port, method: incoming.method, path: incoming.url, headers: incoming.headers },
      (answer) => {
        outgoing.writeHead(answer.statusCode, answer.headers);
        answer.pipe(outgoing);
      },
    );
    upstream.on("error", (error) => outgoing.destroy(error));
    incoming.pipe(upstream);
  });
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  const close = () => {
    proxy.close();
    proxy.closeAllConnections();
  };
  return { seen, url: `http://127.0.0.1:${proxy.address().port}`, close };
}

describe("useHttpGet", () => {
  test("the proto marks Lookup and the Admin reads, and nothing that writes", () => {
    const level = (service, name) => MethodOptions_IdempotencyLevel[service.method[name].idempotency];
    assert.equal(level(Idempotency, "lookup"), "NO_SIDE_EFFECTS");
    assert.equal(level(Admin, "list"), "NO_SIDE_EFFECTS");
    assert.equal(level(Admin, "stats"), "NO_SIDE_EFFECTS");
    for (const method of [...Idempotency.methods, ...Admin.methods]) {
      if (!["Lookup", "List", "Stats"].includes(method.name)) {
        assert.notEqual(MethodOptions_IdempotencyLevel[method.idempotency], "NO_SIDE_EFFECTS", method.name);
      }
    }
  });

  for (const [format, useBinaryFormat, encoding] of [
    ["JSON", false, "json"],
    ["binary", true, "proto"],
  ]) {
    test(`Lookup and Admin reads go as GET with ${format} messages`, async () => {
      const proxy = await startRecordingProxy(server.httpPort);
      try {
        const transport = createConnectTransport({ baseUrl: proxy.url, httpVersion: "1.1", useBinaryFormat, useHttpGet: true });
        const idem = createClient(Idempotency, transport);
        const admin = createClient(Admin, transport);
        const namespace = newKey("get");
        const key = newKey("k");
        const first = await idem.begin({ namespace, key });
        await idem.complete({ namespace, key, token: first.lease.token, result: { code: 204 } });

        const seen = await idem.lookup({ namespace, key });
        assert.equal(state(seen), "COMPLETED");
        assert.equal(seen.result.code, 204);
        const listed = await admin.list({ namespace });
        assert.deepEqual(listed.keys.map((summary) => summary.key), [key]);
        const stats = await admin.stats({ namespace });
        assert.equal(stats.namespaces[0]?.completed, 1n);
        await assertCode(idem.lookup({ namespace, key: "" }), Code.InvalidArgument);

        assert.deepEqual(
          proxy.seen.map((line) => line.replace(/\?.*/, "")),
          [
            "POST /idem.v1.Idempotency/Begin",
            "POST /idem.v1.Idempotency/Complete",
            "GET /idem.v1.Idempotency/Lookup",
            "GET /idem.v1.Admin/List",
            "GET /idem.v1.Admin/Stats",
            "GET /idem.v1.Idempotency/Lookup",
          ],
        );
        for (const line of proxy.seen.filter((line) => line.startsWith("GET "))) {
          const query = new URL(line.slice("GET ".length), proxy.url).searchParams;
          assert.equal(query.get("connect"), "v1", line);
          assert.equal(query.get("encoding"), encoding, line);
          assert.ok(query.get("message"), line);
        }
      } finally {
        proxy.close();
      }
    });
  }
});

test("the example script runs against the server", async () => {
  const { stdout } = await promisify(execFile)(process.execPath, ["begin-complete.mjs", baseUrl, descriptorSet], {
    cwd: packageDir,
    timeout: 30_000,
  });
  assert.match(stdout, /^Begin: OUTCOME_ACQUIRED/m);
  assert.match(stdout, /^Begin again: OUTCOME_COMPLETED, a replay of 201 /m);
  assert.match(stdout, /^Lookup \(GET\): STATE_COMPLETED/m);
});
