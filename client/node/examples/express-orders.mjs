// An order API whose POST /orders is idempotent (docs/http-middleware.md):
//   node client/node/examples/express-orders.mjs
// IDEM_TARGET names idem-server (default 127.0.0.1:50051); it listens on
// 127.0.0.1:8000 (PORT to change).
import express from "express";
import { idempotency } from "@idem/client/express";

const app = express();
app.use(express.json());
app.use(idempotency({ target: process.env.IDEM_TARGET ?? "127.0.0.1:50051", namespace: "orders" }));

let next = 1;
app.post("/orders", (req, res) => {
  const id = `o-${next++}`;
  console.log(`creating order ${id}: ${req.body.quantity} x ${req.body.item}`);
  res.status(201).json({ order: id, item: req.body.item });
});

const port = Number(process.env.PORT ?? 8000);
app.listen(port, "127.0.0.1", () => console.log(`listening on http://127.0.0.1:${port}`));
