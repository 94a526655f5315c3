// Begin, Complete, replay and Lookup of one idempotency key, through
// idem-server's Connect port (--http-listen) with connect-es. There is no
// generated code: the service and its messages come from a descriptor set
// of proto/idem/v1, read at run time.
//
//   protoc -I proto --include_imports --descriptor_set_out=idem.binpb \
//       idem/v1/idempotency.proto idem/v1/admin.proto
//   node begin-complete.mjs http://127.0.0.1:8080 idem.binpb
//
// The descriptor set may also be named by IDEM_DESCRIPTOR_SET.
import { createHash, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";

import { create, createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema, durationFromMs, timestampDate } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";

const [baseUrl, descriptorSet = process.env.IDEM_DESCRIPTOR_SET] = process.argv.slice(2);
if (baseUrl === undefined || descriptorSet === undefined) {
  console.error("usage: node begin-complete.mjs http://HOST:PORT [descriptor-set]");
  process.exit(2);
}

// Everything about idem.v1 that the client needs is in the descriptor set.
const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(descriptorSet)));
const Idempotency = registry.getService("idem.v1.Idempotency");
const Outcome = registry.getEnum("idem.v1.BeginResponse.Outcome");
const State = registry.getEnum("idem.v1.LookupResponse.State");
const name = (enumDesc, number) => enumDesc.value[number]?.name ?? String(number);

// HTTP/1.1 with JSON bodies, easy to watch on the wire (connect-node's
// default is binary: application/proto). useHttpGet sends the methods the
// proto marks NO_SIDE_EFFECTS (here Lookup) as GET, which caches may keep.
const transport = createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: false, useHttpGet: true });
const idem = createClient(Idempotency, transport);

const order = { item: "book", quantity: 1 };
const begin = create(Idempotency.method.begin.input, {
  namespace: "orders",
  key: randomUUID(),
  fingerprint: createHash("sha256").update(JSON.stringify(order)).digest(),
  lease: durationFromMs(30_000),
});
console.log(`key ${begin.key}`);

const first = await idem.begin(begin);
console.log(`Begin: ${name(Outcome, first.outcome)}, token ${first.lease?.token}, attempt ${first.attempt}`);
if (name(Outcome, first.outcome) !== "OUTCOME_ACQUIRED") process.exit(1);

// ... the work happens here, once; then its result is stored.
const body = JSON.stringify({ order: "o-1", ...order });
const completed = await idem.complete({
  namespace: begin.namespace,
  key: begin.key,
  token: first.lease.token,
  result: { code: 201, body: new TextEncoder().encode(body), metadata: { "content-type": "application/json" } },
});
console.log(`Complete: stored at ${timestampDate(completed.completedAt).toISOString()}`);

// A retry of the same request gets the stored result instead of a lease.
const retry = await idem.begin(begin);
const replayed = new TextDecoder().decode(retry.result.body);
console.log(`Begin again: ${name(Outcome, retry.outcome)}, a replay of ${retry.result.code} ${replayed}`);
if (name(Outcome, retry.outcome) !== "OUTCOME_COMPLETED" || replayed !== body) process.exit(1);

const seen = await idem.lookup({ namespace: begin.namespace, key: begin.key });
console.log(`Lookup (GET): ${name(State, seen.state)}, kept until ${timestampDate(seen.expiresAt).toISOString()}`);
if (name(State, seen.state) !== "STATE_COMPLETED") process.exit(1);
