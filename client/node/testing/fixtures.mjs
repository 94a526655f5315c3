// What the test files share: one real idem-server and one client per file,
// and keys no other test uses.
import { after, before } from "node:test";

import { IdemClient } from "@idem/client";

import { Server } from "./server.mjs";

let unique = 0;

/** A fresh key; `quoted` makes it an RFC 8941 string for a header. */
export function newKey(name, { quoted = false } = {}) {
  const key = `${name}-${process.pid}-${++unique}`;
  return quoted ? `"${key}"` : key;
}

/**
 * Starts a server before the file's tests and stops it after; `.client`
 * is set once it runs, and `.ready` resolves then (hooks of the same level
 * may run side by side: await it there).
 */
export function serverForTests() {
  let ready;
  const fixture = { server: new Server(), client: null, ready: new Promise((resolve) => (ready = resolve)) };
  before(async () => {
    fixture.client = new IdemClient({ target: await fixture.server.start() });
    ready();
  });
  after(async () => {
    fixture.client.close();
    await fixture.server.stop();
  });
  return fixture;
}
