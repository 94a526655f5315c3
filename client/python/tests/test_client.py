import threading
import uuid

import pytest

import idem


def new_key():
    return "k-" + uuid.uuid4().hex


def test_begin_complete_and_replay(client):
    key = new_key()
    fp = idem.fingerprint(b"charge 10 EUR")
    begun = client.begin("payments", key, fingerprint=fp, lease=30)
    assert begun.outcome == idem.ACQUIRED
    assert begun.token > 0
    client.complete("payments", key, begun.token,
                    idem.Result(code=201, body=b"charged", metadata={"a": "b"}))
    again = client.begin("payments", key, fingerprint=fp)
    assert again.outcome == idem.COMPLETED
    assert again.result == idem.Result(code=201, body=b"charged",
                                       metadata={"a": "b"}, replayed=True)
    looked = client.lookup("payments", key)
    assert looked.state == idem.COMPLETED
    assert looked.result.body == b"charged"
    assert client.begin("payments", key,
                        fingerprint=idem.fingerprint(b"other")).outcome == idem.MISMATCH


def test_a_stale_token_is_lease_lost(client):
    key = new_key()
    begun = client.begin("payments", key, fingerprint=b"fp", lease=30)
    client.release("payments", key, begun.token)
    second = client.begin("payments", key, fingerprint=b"fp", lease=30)
    assert second.token > begun.token
    with pytest.raises(idem.LeaseLost):
        client.complete("payments", key, begun.token, idem.Result(body=b"late"))


def test_run_does_the_work_once_among_concurrent_callers(server):
    key = new_key()
    runs = []
    results = []
    lock = threading.Lock()

    def work(context):
        with lock:
            runs.append(context.token)
        threading.Event().wait(0.3)
        return idem.Result(code=200, body=b"done once")

    def caller():
        with idem.IdemClient(server) as c:
            result = c.run("orders", key, work, fingerprint=b"same", wait=10)
            with lock:
                results.append(result)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(runs) == 1
    assert len(results) == 8
    assert all(r.body == b"done once" for r in results)
    assert sum(1 for r in results if not r.replayed) == 1


def test_failed_work_releases_the_key(client):
    key = new_key()

    def fails(_context):
        raise RuntimeError("downstream down")

    with pytest.raises(RuntimeError):
        client.run("orders", key, fails, fingerprint=b"fp")
    # Released: a retry runs the work.
    result = client.run("orders", key, lambda c: b"second try", fingerprint=b"fp")
    assert result.body == b"second try"
    assert not result.replayed


def test_heartbeat_keeps_a_short_lease(server, client):
    key = new_key()
    seen = {}

    def slow(_context):
        # Past the 1 s lease: without the heartbeat another caller would
        # acquire the key here.
        threading.Event().wait(1.8)
        with idem.IdemClient(server) as other:
            seen["outcome"] = other.begin("orders", key, fingerprint=b"fp").outcome
        threading.Event().wait(0.7)
        return b"slow but kept"

    result = client.run("orders", key, slow, fingerprint=b"fp", lease=1)
    assert result.body == b"slow but kept"
    assert seen["outcome"] == idem.IN_PROGRESS


def test_work_must_return_bytes_or_a_result(client):
    key = new_key()
    with pytest.raises(TypeError):
        client.run("orders", key, lambda c: 42, fingerprint=b"fp")
    # The key was released, not left in progress.
    assert client.run("orders", key, lambda c: "text", fingerprint=b"fp").body == b"text"


def test_idempotent_consumer_skips_redeliveries(client):
    handled = []

    @idem.idempotent_consumer(client, "events", key=lambda e: e["id"])
    def handle(event):
        handled.append(event["id"])
        return {"charged": event["amount"]}

    event = {"id": new_key(), "amount": 10}
    first = handle(event)
    second = handle(dict(event))
    assert first == idem.ConsumerOutcome(value={"charged": 10}, duplicate=False)
    assert second == idem.ConsumerOutcome(value={"charged": 10}, duplicate=True)
    assert handled == [event["id"]]
    with pytest.raises(idem.Mismatch):
        handle({"id": event["id"], "amount": 99})  # Same id, other content.


def test_default_retries_ride_out_a_restart_of_seconds(own_server):
    with idem.IdemClient("127.0.0.1:%d" % own_server.port) as c:
        c.lookup("x", "y")
        own_server.kill()
        restarter = threading.Timer(3.0, own_server.start)
        restarter.start()
        # Sent while the server is down; it waits the outage out.
        assert c.lookup("x", "y").state == "ABSENT"
        restarter.join()


def test_unreachable_server_is_unavailable():
    with idem.IdemClient("127.0.0.1:1", attempts=2, total_timeout=1,
                         timeout=0.5) as c:
        with pytest.raises(idem.Unavailable):
            c.lookup("x", "y")


def test_fingerprint_parts_is_length_prefixed():
    assert idem.fingerprint_parts("POST", "/v1/orders", b"{}") == \
        idem.fingerprint(b"4:POST10:/v1/orders2:{}")
    assert idem.fingerprint_parts("ab", "c") != idem.fingerprint_parts("a", "bc")
