// Generates the typed stubs of proto/idem/v1 into src/gen with Debian's
// protoc and the ts-proto plugin from node_modules (never committed).
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const protoDir = join(root, "..", "..", "proto");
const out = join(root, "src", "gen");
const plugin = join(root, "node_modules", ".bin", "protoc-gen-ts_proto");

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
try {
  execFileSync(
    process.env.PROTOC ?? "protoc",
    [
      `--plugin=protoc-gen-ts_proto=${plugin}`,
      `--ts_proto_out=${out}`,
      "--ts_proto_opt=outputServices=grpc-js,env=node,forceLong=bigint,esModuleInterop=true,useDate=true",
      `-I${protoDir}`,
      "idem/v1/idempotency.proto",
      "idem/v1/admin.proto",
    ],
    { stdio: "inherit" },
  );
} catch (error) {
  console.error(
    "protoc failed: it comes from Debian's protobuf-compiler (tools/dev/deps.sh " +
      "installs it), the plugin from `npm ci`",
  );
  process.exit(1);
}
