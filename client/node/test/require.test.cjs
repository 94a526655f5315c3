// CommonJS consumers get the same package as ESM ones.
const assert = require("node:assert/strict");
const { test } = require("node:test");

test("require('@idem/client') works and matches the ESM entry", async () => {
  const cjs = require("@idem/client");
  assert.equal(typeof cjs.IdemClient, "function");
  assert.equal(typeof cjs.fingerprintParts, "function");
  const esm = await import("@idem/client");
  assert.equal(esm.IdemClient, cjs.IdemClient); // One copy: instanceof holds.
  assert.equal(esm.Mismatch, cjs.Mismatch);
});
