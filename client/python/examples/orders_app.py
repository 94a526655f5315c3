"""An order API whose POST /orders is idempotent: the example of
docs/http-middleware.md. From the repository root, after a build:

    PYTHONPATH=client/python /usr/bin/python3 -m uvicorn \
        --app-dir client/python/examples orders_app:app --port 8000
"""

import os

from fastapi import BackgroundTasks, FastAPI
from pydantic import BaseModel

from idem import IdempotencyMiddleware

app = FastAPI()
app.add_middleware(IdempotencyMiddleware,
                   target=os.environ.get("IDEM_TARGET", "127.0.0.1:50051"),
                   namespace="orders",
                   docs_url="https://api.example.com/docs/idempotency")


class Order(BaseModel):
    item: str
    quantity: int


orders = []  # Stands for the database: one entry per order created.


@app.post("/orders", status_code=201)
def create_order(order: Order, tasks: BackgroundTasks):
    orders.append(order)
    tasks.add_task(print, f"order {len(orders)} created: send the e-mail")
    return {"id": len(orders), "item": order.item, "quantity": order.quantity}
