// The real idem-server on a free loopback port, for the tests: ctest names
// the binary in IDEM_SERVER_BINARY. restart() keeps the port and the data.
// Extra args such as `--http-listen=127.0.0.1:0` are passed on; httpPort is
// then read from the port file's `http=PORT` line.
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, existsSync, openSync, closeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

export class Server {
  constructor(extraArgs = []) {
    this.binary = process.env.IDEM_SERVER_BINARY;
    if (!this.binary) {
      throw new Error("IDEM_SERVER_BINARY must name the idem-server binary (ctest sets it)");
    }
    this.dir = mkdtempSync(join(tmpdir(), "idem-node-"));
    this.extraArgs = extraArgs;
    this.port = 0;
    this.httpPort = 0;
    this.child = null;
  }

  get target() {
    return `127.0.0.1:${this.port}`;
  }

  async start() {
    const portFile = join(this.dir, "port");
    rmSync(portFile, { force: true });
    const log = openSync(join(this.dir, "server.log"), "a");
    this.child = spawn(
      this.binary,
      [
        `--listen=127.0.0.1:${this.port}`,
        `--data-dir=${join(this.dir, "data")}`,
        `--port-file=${portFile}`,
        "--metrics-listen=",
        "--http-listen=",
        ...this.extraArgs,
      ],
      { stdio: ["ignore", log, log] },
    );
    closeSync(log);
    let exited = false;
    this.child.once("exit", () => {
      exited = true;
    });
    const deadline = Date.now() + 30000;
    while (Date.now() < deadline) {
      if (exited) throw new Error(`idem-server exited at start-up:\n${this.log()}`);
      if (existsSync(portFile)) {
        // Written atomically: line 1 is the gRPC port, then NAME=PORT lines.
        const [port, ...named] = readFileSync(portFile, "utf8").split("\n");
        if (port.trim() !== "") {
          this.port = Number(port.trim());
          const http = named.find((line) => line.startsWith("http="));
          this.httpPort = http === undefined ? 0 : Number(http.slice("http=".length).trim());
          return this.target;
        }
      }
      await sleep(20);
    }
    throw new Error("idem-server did not start in 30 s");
  }

  log() {
    try {
      return readFileSync(join(this.dir, "server.log"), "utf8");
    } catch {
      return "";
    }
  }

  async kill() {
    if (this.child === null) return;
    const child = this.child;
    this.child = null;
    if (child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGKILL");
    await gone;
  }

  async restart() {
    await this.kill();
    return this.start();
  }

  async stop() {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
