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


def test_threads_sharing_one_client_each_get_their_answer(client):
    failures = []

    def worker(n):
        for i in range(20):
            key = new_key()
            body = b"body %d %d" % (n, i)
            begun = client.begin("shared", key, fingerprint=b"fp")
            if begun.outcome != idem.ACQUIRED:
                failures.append((n, i, begun.outcome))
                continue
            client.complete("shared", key, begun.token, idem.Result(body=body))
            replay = client.begin("shared", key, fingerprint=b"fp")
            if replay.result is None or replay.result.body != body:
                failures.append((n, i, replay))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_a_server_without_session_is_called_with_unary_rpcs(server):
    """An older server: a proxy forwarding the unary RPCs, without Session
    (gRPC answers UNIMPLEMENTED for it)."""
    from concurrent import futures

    import grpc
    from idem.v1 import idempotency_pb2_grpc as pb_grpc

    upstream = pb_grpc.IdempotencyStub(grpc.insecure_channel(server))

    class UnaryOnly(pb_grpc.IdempotencyServicer):
        def Begin(self, request, context):
            return upstream.Begin(request, timeout=5)

        def Complete(self, request, context):
            return upstream.Complete(request, timeout=5)

        def Lookup(self, request, context):
            return upstream.Lookup(request, timeout=5)

    proxy = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_IdempotencyServicer_to_server(UnaryOnly(), proxy)
    port = proxy.add_insecure_port("127.0.0.1:0")
    proxy.start()
    try:
        with idem.IdemClient("127.0.0.1:%d" % port) as old:
            key = new_key()
            begun = old.begin("older", key, fingerprint=b"fp")
            assert begun.outcome == idem.ACQUIRED
            old.complete("older", key, begun.token, idem.Result(body=b"made"))
            assert old.lookup("older", key).result.body == b"made"
            assert old.begin("older", key,
                             fingerprint=b"fp").outcome == idem.COMPLETED
    finally:
        proxy.stop(None)
