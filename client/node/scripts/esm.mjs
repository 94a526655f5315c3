// ESM entry points over the CommonJS build: `import { IdemClient } from
// "@idem/client"` gets the same objects as require() (one copy, so
// instanceof works across both).
import { mkdirSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);
const entries = ["index", "express", "fastify", "nestjs"];
mkdirSync(join(root, "dist", "esm"), { recursive: true });
for (const entry of entries) {
  const names = Object.keys(require(join(root, "dist", `${entry}.js`))).filter(
    (name) => name !== "__esModule" && name !== "default",
  );
  const lines = [
    'import { createRequire } from "node:module";',
    "const require = createRequire(import.meta.url);",
    `const m = require("../${entry}.js");`,
    ...names.map((name) => `export const ${name} = m.${name};`),
    "export default m;",
    "",
  ];
  writeFileSync(join(root, "dist", "esm", `${entry}.mjs`), lines.join("\n"));
}
