// Runs "create order" twice under one idempotency key: the second time the
// stored result comes back and nothing runs again.
//   node client/node/examples/create-order.mjs [HOST:PORT] [KEY]
import { IdemClient, fingerprint } from "@idem/client";

const [target = "127.0.0.1:50051", key = "o-7"] = process.argv.slice(2);
const client = new IdemClient({ target });
const body = '{"item":"book","quantity":1}';

async function createOrder(run) {
  // Runs once per key.
  console.log(`creating the order, token ${run.token}`);
  return { code: 201, body: '{"order":"o-7"}' };
}

for (let i = 0; i < 2; i++) {
  const result = await client.run("orders", key, createOrder, {
    fingerprint: fingerprint(body),
  });
  console.log(result.code, result.body.toString(), result.replayed ? "replayed" : "created");
}
client.close();
