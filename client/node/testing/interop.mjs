// Single calls from Node.js for the cross-language test
// (client/python/tests/test_interop.py):
//   node interop.mjs begin HOST:PORT NAMESPACE KEY FINGERPRINT_HEX
//       prints {"outcome": ..., "token": "..."} (the token as a decimal string)
//   node interop.mjs fingerprint PART...     prints fingerprintParts in hex
import { IdemClient, fingerprintParts } from "@idem/client";

const [op, ...args] = process.argv.slice(2);
if (op === "fingerprint") {
  console.log(fingerprintParts(...args).toString("hex"));
} else if (op === "begin") {
  const [target, namespace, key, fp] = args;
  const client = new IdemClient({ target });
  try {
    const begun = await client.begin(namespace, key, { fingerprint: Buffer.from(fp, "hex"), leaseMs: 30000 });
    console.log(JSON.stringify({ outcome: begun.outcome, token: String(begun.token) }));
  } finally {
    client.close();
  }
} else {
  console.error(`unknown op ${JSON.stringify(op)}: begin or fingerprint`);
  process.exit(2);
}
