"""The ASGI middleware with FastAPI's test client against the real server."""

import threading
import uuid

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.testclient import TestClient

from idem.middleware import IdempotencyMiddleware


def make_app(server, **options):
    app = FastAPI()
    state = {"runs": 0, "fail_next": False,
             "release": threading.Event(), "entered": threading.Event()}
    app.add_middleware(IdempotencyMiddleware, target=server,
                       namespace="http-" + uuid.uuid4().hex[:8], **options)

    @app.post("/orders")
    async def create(request: Request):
        state["runs"] += 1
        payload = await request.json()
        return JSONResponse({"order": state["runs"], "item": payload["item"]},
                            status_code=201, headers={"x-order": str(state["runs"])})

    @app.post("/slow")
    def slow():
        state["runs"] += 1
        state["entered"].set()
        state["release"].wait(10)
        return {"slow": True}

    @app.post("/flaky")
    def flaky():
        state["runs"] += 1
        if state["runs"] == 1:
            return JSONResponse({"error": "upstream"}, status_code=503)
        return {"ok": True}

    @app.post("/boom")
    def boom():
        state["runs"] += 1
        if state["runs"] == 1:
            raise RuntimeError("the app failed")
        return {"ok": state["runs"]}

    @app.post("/stream")
    async def stream():
        state["runs"] += 1

        async def chunks():
            for i in range(3):
                yield f"chunk {i};".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.post("/cookies")
    def cookies():
        state["runs"] += 1
        response = Response("ok")
        response.set_cookie("a", "1")
        response.set_cookie("b", "2")
        return response

    @app.get("/orders")
    def list_orders():
        state["runs"] += 1
        return {"runs": state["runs"]}

    return app, state


def key():
    return uuid.uuid4().hex


def test_same_key_replays_the_same_response(server):
    app, state = make_app(server)
    with TestClient(app) as http:
        k = key()
        first = http.post("/orders", json={"item": "book"},
                          headers={"Idempotency-Key": k})
        second = http.post("/orders", json={"item": "book"},
                           headers={"Idempotency-Key": k})
        assert first.status_code == 201
        assert "idempotent-replayed" not in first.headers
        assert second.status_code == 201
        assert second.json() == first.json()
        assert second.headers["x-order"] == first.headers["x-order"]
        assert second.headers["content-type"] == first.headers["content-type"]
        assert second.headers["idempotent-replayed"] == "true"
        assert state["runs"] == 1


def test_different_keys_are_independent(server):
    app, state = make_app(server)
    with TestClient(app) as http:
        a = http.post("/orders", json={"item": "book"},
                      headers={"Idempotency-Key": key()})
        b = http.post("/orders", json={"item": "book"},
                      headers={"Idempotency-Key": key()})
        assert a.json()["order"] == 1
        assert b.json()["order"] == 2
        assert state["runs"] == 2


def test_a_changed_body_is_422(server):
    app, state = make_app(server)
    with TestClient(app) as http:
        k = key()
        http.post("/orders", json={"item": "book"}, headers={"Idempotency-Key": k})
        changed = http.post("/orders", json={"item": "pen"},
                            headers={"Idempotency-Key": k})
        assert changed.status_code == 422
        assert state["runs"] == 1


def start_slow_request(http, state, k):
    """Sends POST /slow with key `k` on a thread; returns once the app is in
    it. The thread puts the response in the returned dict."""
    first = {}
    thread = threading.Thread(target=lambda: first.update(
        response=http.post("/slow", headers={"Idempotency-Key": k})))
    thread.start()
    assert state["entered"].wait(10)
    return thread, first


def test_a_concurrent_duplicate_is_409(server):
    app, state = make_app(server)
    with TestClient(app) as http:
        k = key()
        thread, first = start_slow_request(http, state, k)
        duplicate = http.post("/slow", headers={"Idempotency-Key": k})
        state["release"].set()
        thread.join()
        assert duplicate.status_code == 409
        assert duplicate.headers["retry-after"] == "1"
        assert first["response"].status_code == 200
        assert state["runs"] == 1


def test_a_waiting_duplicate_gets_the_result(server):
    app, state = make_app(server, wait=10)
    with TestClient(app) as http:
        k = key()
        thread, first = start_slow_request(http, state, k)
        threading.Timer(0.3, state["release"].set).start()
        duplicate = http.post("/slow", headers={"Idempotency-Key": k})
        thread.join()
        assert duplicate.status_code == 200
        assert duplicate.json() == {"slow": True}
        assert duplicate.headers["idempotent-replayed"] == "true"
        assert state["runs"] == 1


def test_requests_without_the_header_pass_through(server):
    app, state = make_app(server)
    with TestClient(app) as http:
        assert http.post("/orders", json={"item": "a"}).status_code == 201
        assert http.post("/orders", json={"item": "a"}).status_code == 201
        assert http.get("/orders", headers={"Idempotency-Key": key()}).json() == {"runs": 3}
        assert state["runs"] == 3


def test_a_required_key_is_400_when_missing(server):
    app, state = make_app(server, require_key=True)
    with TestClient(app) as http:
        missing = http.post("/orders", json={"item": "a"})
        assert missing.status_code == 400
        assert "Idempotency-Key" in missing.json()["error"] or \
            "idempotency-key" in missing.json()["error"]
        assert state["runs"] == 0


def test_an_oversized_body_is_413(server):
    app, state = make_app(server, max_body_bytes=64)
    with TestClient(app) as http:
        big = http.post("/orders", json={"item": "x" * 100},
                        headers={"Idempotency-Key": key()})
        assert big.status_code == 413
        assert state["runs"] == 0


def test_an_app_exception_releases_the_key(server):
    app, state = make_app(server)
    with TestClient(app, raise_server_exceptions=False) as http:
        k = key()
        assert http.post("/boom", headers={"Idempotency-Key": k}).status_code == 500
        retry = http.post("/boom", headers={"Idempotency-Key": k})
        assert retry.status_code == 200
        assert retry.json() == {"ok": 2}
        assert state["runs"] == 2


def test_streaming_responses_are_stored_whole(server):
    app, state = make_app(server)
    with TestClient(app) as http:
        k = key()
        first = http.post("/stream", headers={"Idempotency-Key": k})
        second = http.post("/stream", headers={"Idempotency-Key": k})
        assert first.text == "chunk 0;chunk 1;chunk 2;"
        assert second.text == first.text
        assert second.headers["idempotent-replayed"] == "true"
        assert state["runs"] == 1


def test_repeated_headers_are_replayed(server):
    app, state = make_app(server)
    with TestClient(app) as http:
        k = key()
        http.post("/cookies", headers={"Idempotency-Key": k})
        replay = http.post("/cookies", headers={"Idempotency-Key": k})
        assert replay.headers.get_list("set-cookie") == [
            "a=1; Path=/; SameSite=lax", "b=2; Path=/; SameSite=lax"]
        assert state["runs"] == 1


def test_another_query_is_another_request(server):
    app, state = make_app(server)
    with TestClient(app) as http:
        k = key()
        http.post("/orders?a=1", json={"item": "x"}, headers={"Idempotency-Key": k})
        other = http.post("/orders?a=2", json={"item": "x"},
                          headers={"Idempotency-Key": k})
        assert other.status_code == 422


def test_two_key_headers_are_400(server):
    app, state = make_app(server)
    with TestClient(app) as http:
        response = http.post("/orders", json={"item": "x"},
                             headers=[("Idempotency-Key", "a"),
                                      ("Idempotency-Key", "b")])
        assert response.status_code == 400
        assert state["runs"] == 0


def test_keys_can_be_scoped_per_caller(server):
    app, state = make_app(
        server, key_func=lambda scope, k: dict(scope["headers"]).get(
            b"x-user", b"anon").decode() + "/" + k)
    with TestClient(app) as http:
        k = key()
        a = http.post("/orders", json={"item": "x"},
                      headers={"Idempotency-Key": k, "X-User": "alice"})
        b = http.post("/orders", json={"item": "x"},
                      headers={"Idempotency-Key": k, "X-User": "bob"})
        assert a.json()["order"] == 1
        assert b.json()["order"] == 2  # Bob's request ran: not Alice's result.


def test_5xx_results_are_released(server):
    app, state = make_app(server)
    with TestClient(app) as http:
        k = key()
        assert http.post("/flaky", headers={"Idempotency-Key": k}).status_code == 503
        retry = http.post("/flaky", headers={"Idempotency-Key": k})
        assert retry.status_code == 200
        assert "idempotent-replayed" not in retry.headers
        assert state["runs"] == 2
