// Request fingerprints, byte for byte the same as the C++, Python and Go
// clients'.
//
// fingerprint(data) is the raw SHA-256 of the request bytes (what the server
// computes from BeginRequest.request). fingerprintParts(...parts) hashes
// several parts unambiguously: each part is written as its length in bytes,
// in decimal, a colon, and its bytes ("4:POST10:/v1/orders2:{}"). Strings
// are UTF-8. The HTTP middleware uses fingerprintParts(method, target, body).
import { createHash } from "node:crypto";

export type Bytes = string | Uint8Array;

function asBytes(part: Bytes): Buffer {
  return typeof part === "string"
    ? Buffer.from(part, "utf8")
    : Buffer.from(part.buffer, part.byteOffset, part.byteLength);
}

/** The raw 32-byte SHA-256 digest of `data`. */
export function fingerprint(data: Bytes): Buffer {
  return createHash("sha256").update(asBytes(data)).digest();
}

/** The raw 32-byte SHA-256 of the length-prefixed `parts`. */
export function fingerprintParts(...parts: Bytes[]): Buffer {
  const hash = createHash("sha256");
  for (const part of parts) {
    const data = asBytes(part);
    hash.update(`${data.length}:`, "ascii");
    hash.update(data);
  }
  return hash.digest();
}
