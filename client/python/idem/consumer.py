"""Idempotent message consumers (Kafka-style): each event is handled at most
once per event id, and a redelivered event gets the recorded result back
instead of running the handler again.

    @idempotent_consumer(client, "payments-events", key=lambda e: e["id"])
    def handle(event):
        charge(event)
        return {"charged": event["amount"]}

    outcome = handle(event)      # ConsumerOutcome(value=..., duplicate=False)
    outcome = handle(event)      # redelivery: duplicate=True, same value
"""

import dataclasses
import functools
import json
from typing import Any, Callable, Optional

from idem.client import IdemClient, Result
from idem.fingerprint import fingerprint


@dataclasses.dataclass
class ConsumerOutcome:
    value: Any  # What the handler returned (JSON round-tripped on replays).
    duplicate: bool  # True when the event had been handled before.


def idempotent_consumer(client: IdemClient, namespace: str, *,
                        key: Callable[[Any], str],
                        payload: Optional[Callable[[Any], bytes]] = None,
                        lease: float = 30.0, wait: float = 30.0,
                        retention: Optional[float] = None):
    """Decorates ``handler(event)``. ``key(event)`` is the event id;
    ``payload(event)`` the bytes that identify its content (default: the
    event as canonical JSON), so that a different event reusing an id fails
    with Mismatch instead of being skipped. The handler's return value must
    be JSON-serializable: it is what duplicates get back."""

    def content(event) -> bytes:
        if payload is not None:
            return payload(event)
        return json.dumps(event, sort_keys=True, separators=(",", ":"),
                          default=str).encode("utf-8")

    def decorate(handler):
        @functools.wraps(handler)
        def wrapper(event) -> ConsumerOutcome:
            def work(_context):
                value = handler(event)
                return Result(code=0, body=json.dumps(value).encode("utf-8"))

            result = client.run(namespace, key(event), work,
                                fingerprint=fingerprint(content(event)),
                                lease=lease, wait=wait, retention=retention)
            return ConsumerOutcome(value=json.loads(result.body or b"null"),
                                   duplicate=result.replayed)

        return wrapper

    return decorate
