// TLS, mutual TLS and bearer tokens against the real idem-server with a
// policy: certificates made by openssl for the test.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { IdemClient, IdemError, fingerprint } from "@idem/client";

import { Server } from "../testing/server.mjs";

const dir = mkdtempSync(join(tmpdir(), "idem-node-tls-"));
const file = (name) => join(dir, name);
const openssl = (...args) => execFileSync("openssl", args, { stdio: ["ignore", "ignore", "pipe"] });

function makeCertificates() {
  openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=idem-test-ca",
    "-keyout", file("ca.key"), "-out", file("ca.crt"));
  writeFileSync(file("server.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
  openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
    "-keyout", file("server.key"), "-out", file("server.csr"));
  openssl("x509", "-req", "-in", file("server.csr"), "-CA", file("ca.crt"), "-CAkey", file("ca.key"),
    "-CAcreateserial", "-days", "2", "-extfile", file("server.ext"), "-out", file("server.crt"));
  openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=node-client",
    "-keyout", file("client.key"), "-out", file("client.csr"));
  openssl("x509", "-req", "-in", file("client.csr"), "-CA", file("ca.crt"), "-CAkey", file("ca.key"),
    "-CAcreateserial", "-days", "2", "-out", file("client.crt"));
}

const TOKEN = "node-test-token-7f3a";

before(() => {
  makeCertificates();
  const digest = createHash("sha256").update(TOKEN).digest("hex");
  writeFileSync(
    file("policy.yaml"),
    [
      "principals:",
      "  - name: node-client",
      "    match: {common_name: \"node-client\"}",
      "    namespaces: [\"mtls\"]",
      "  - name: token-caller",
      `    match: {token_sha256: "${digest}"}`,
      "    namespaces: [\"tok\"]",
      "",
    ].join("\n"),
  );
});
after(() => rmSync(dir, { recursive: true, force: true }));

const tls = (extra = {}) => ({ ca: readFileSync(file("ca.crt")), ...extra });
const deniedWith = (code) => (error) => error instanceof IdemError && error.code === code;

describe("mutual TLS", () => {
  const server = new Server([
    `--tls-cert=${file("server.crt")}`, `--tls-key=${file("server.key")}`,
    `--tls-client-ca=${file("ca.crt")}`, `--policy=${file("policy.yaml")}`,
  ]);
  let target;
  before(async () => {
    target = await server.start();
  });
  after(() => server.stop());

  test("a client certificate is the caller's identity", async () => {
    const client = new IdemClient({
      target,
      tls: tls({ cert: readFileSync(file("client.crt")), key: readFileSync(file("client.key")) }),
    });
    try {
      const begun = await client.begin("mtls", "k1", { fingerprint: fingerprint("x") });
      assert.equal(begun.outcome, "ACQUIRED");
      await assert.rejects(client.lookup("other", "k1"), deniedWith(7)); // PERMISSION_DENIED
    } finally {
      client.close();
    }
  });

  test("plaintext to a TLS port is refused, not retried forever", async () => {
    const client = new IdemClient({ target, totalTimeoutMs: 1500, timeoutMs: 500 });
    try {
      await assert.rejects(client.lookup("mtls", "k1"), IdemError);
    } finally {
      client.close();
    }
  });
});

describe("bearer tokens over TLS", () => {
  const server = new Server([
    `--tls-cert=${file("server.crt")}`, `--tls-key=${file("server.key")}`,
    `--policy=${file("policy.yaml")}`,
  ]);
  let target;
  before(async () => {
    target = await server.start();
  });
  after(() => server.stop());

  test("a token is allowed in its namespaces only", async () => {
    const client = new IdemClient({ target, tls: tls(), bearerToken: TOKEN });
    const anonymous = new IdemClient({ target, tls: tls() });
    try {
      const begun = await client.begin("tok", "k1", { fingerprint: fingerprint("x") });
      assert.equal(begun.outcome, "ACQUIRED");
      await assert.rejects(client.begin("mtls", "k1"), deniedWith(7)); // PERMISSION_DENIED
      await assert.rejects(anonymous.lookup("tok", "k1"), deniedWith(16)); // UNAUTHENTICATED
    } finally {
      client.close();
      anonymous.close();
    }
  });

  test("the server name can differ from the target", async () => {
    const client = new IdemClient({
      target: target.replace("127.0.0.1", "localhost"),
      tls: tls({ serverName: "localhost" }),
      bearerToken: TOKEN,
    });
    try {
      assert.equal((await client.lookup("tok", "k1")).state, "IN_PROGRESS");
    } finally {
      client.close();
    }
  });
});
