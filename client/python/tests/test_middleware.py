"""The ASGI middleware over real HTTP: each test serves a FastAPI app with the
middleware under uvicorn on a loopback port, talks to it with httpx, and the
middleware talks to the real idem-server."""

import asyncio
import importlib.util
import logging
import pathlib
import socket
import threading
import time
import uuid

import httpx
import pytest
import uvicorn
from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.authentication import (AuthCredentials, AuthenticationBackend,
                                      SimpleUser)
from starlette.middleware.authentication import AuthenticationMiddleware

import idem
from idem.middleware import IdempotencyMiddleware, mark_not_executed

DOCS = "https://api.example.com/docs/idempotency"


class LiveServer:
    """`app` under uvicorn on a free loopback port, on a thread of its own."""

    def __init__(self, app):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d" % sock.getsockname()[1]
        # log_config=None: leave logging alone, so that caplog sees records.
        self.server = uvicorn.Server(uvicorn.Config(
            app, log_config=None, access_log=False))
        self.thread = threading.Thread(target=self.server.run,
                                       kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        # A connection per request: uvicorn closes one after an app error,
        # which a pooled connection would only notice at the next request.
        self.http = httpx.Client(base_url=self.url, timeout=10,
                                 limits=httpx.Limits(max_keepalive_connections=0))

    def stop(self):
        self.http.close()
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def serve():
    """serve(app) -> an httpx.Client of `app` served over real HTTP."""
    servers = []

    def start(app):
        servers.append(LiveServer(app))
        return servers[-1].http

    yield start
    for server in servers:
        server.stop()


class Order(BaseModel):
    item: str
    quantity: int


def make_app(server, **options):
    """A FastAPI app behind the middleware; state["runs"] counts handler
    runs (the side effect that must happen once per key)."""
    app = FastAPI()
    namespace = "http-" + uuid.uuid4().hex[:8]
    state = {"runs": 0, "namespace": namespace, "started": False,
             "release": threading.Event(), "entered": threading.Event(),
             "background_done": threading.Event()}
    if "client" not in options:
        options["target"] = server
    app.add_middleware(IdempotencyMiddleware, namespace=namespace, **options)

    @app.on_event("startup")
    def started():
        state["started"] = True

    @app.post("/orders")
    async def create(request: Request):
        state["runs"] += 1
        payload = await request.json()
        return JSONResponse({"order": state["runs"], "item": payload["item"]},
                            status_code=201, headers={"x-order": str(state["runs"])})

    @app.post("/echo")
    async def echo(request: Request):
        state["runs"] += 1
        return {"runs": state["runs"], "body": (await request.body()).decode()}

    @app.post("/validated", status_code=201)
    def validated(order: Order):
        state["runs"] += 1
        return {"order": state["runs"], "quantity": order.quantity}

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
                await asyncio.sleep(0.01)
                yield f"chunk {i};".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.post("/cookies")
    def cookies():
        state["runs"] += 1
        response = Response("ok")
        response.set_cookie("a", "1")
        response.set_cookie("b", "2")
        return response

    @app.post("/background-fails", status_code=201)
    def background_fails(tasks: BackgroundTasks):
        state["runs"] += 1

        def send_email():
            raise RuntimeError("the mail server is down")

        tasks.add_task(send_email)
        return {"order": state["runs"]}

    @app.post("/background-slow", status_code=201)
    def background_slow(tasks: BackgroundTasks):
        state["runs"] += 1

        async def slow_task():
            await asyncio.sleep(1)
            state["background_done"].set()

        tasks.add_task(slow_task)
        return {"order": state["runs"]}

    @app.post("/checked")
    async def checked(request: Request):
        # The app's own check, before any side effect.
        if request.query_params.get("ok") != "1":
            mark_not_executed(request)
            return JSONResponse({"error": "not ok"}, status_code=400)
        state["runs"] += 1
        return JSONResponse({"runs": state["runs"]}, status_code=201)

    async def unfinished(scope, receive, send):
        state["runs"] += 1
        await send({"type": "http.response.start", "status": 201,
                    "headers": []})
        await send({"type": "http.response.body", "body": b"part",
                    "more_body": True})

    app.mount("/unfinished", unfinished)

    @app.get("/orders")
    def list_orders():
        state["runs"] += 1
        return {"runs": state["runs"]}

    return app, state


def key():
    return uuid.uuid4().hex


def without_date(response):
    return sorted((n, v) for n, v in response.headers.raw if n != b"date")


def assert_problem(response, status, title, docs_url=idem.middleware.DEFAULT_DOCS_URL):
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["link"] == \
        f'<{docs_url}>; rel="describedby"; type="text/html"'
    problem = response.json()
    assert problem["type"] == docs_url
    assert problem["title"] == title
    assert problem["status"] == status
    assert problem["detail"]
    return problem


# --- Replays ---------------------------------------------------------------

def test_same_key_replays_the_same_response_byte_for_byte(server, serve):
    app, state = make_app(server)
    http = serve(app)
    k = key()
    first = http.post("/orders", json={"item": "book"},
                      headers={"Idempotency-Key": k})
    second = http.post("/orders", json={"item": "book"},
                       headers={"Idempotency-Key": k})
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert second.status_code == 201
    assert second.content == first.content
    assert without_date(second) == sorted(
        without_date(first) + [(b"idempotent-replayed", b"true")])
    assert state["runs"] == 1


def test_different_keys_are_independent(server, serve):
    app, state = make_app(server)
    http = serve(app)
    a = http.post("/orders", json={"item": "book"},
                  headers={"Idempotency-Key": key()})
    b = http.post("/orders", json={"item": "book"},
                  headers={"Idempotency-Key": key()})
    assert a.json()["order"] == 1
    assert b.json()["order"] == 2
    assert state["runs"] == 2


def test_a_changed_body_is_a_422_problem(server, serve):
    app, state = make_app(server)
    http = serve(app)
    k = key()
    http.post("/orders", json={"item": "book"}, headers={"Idempotency-Key": k})
    changed = http.post("/orders", json={"item": "pen"},
                        headers={"Idempotency-Key": k})
    assert_problem(changed, 422, "Idempotency-Key is already used")
    assert state["runs"] == 1


def test_another_query_is_another_request(server, serve):
    app, state = make_app(server)
    http = serve(app)
    k = key()
    http.post("/orders?a=1", json={"item": "x"}, headers={"Idempotency-Key": k})
    other = http.post("/orders?a=2", json={"item": "x"},
                      headers={"Idempotency-Key": k})
    assert other.status_code == 422


def test_streaming_responses_are_stored_whole(server, serve):
    app, state = make_app(server)
    http = serve(app)
    k = key()
    first = http.post("/stream", headers={"Idempotency-Key": k})
    second = http.post("/stream", headers={"Idempotency-Key": k})
    assert first.text == "chunk 0;chunk 1;chunk 2;"
    assert second.text == first.text
    assert second.headers["idempotent-replayed"] == "true"
    assert state["runs"] == 1


def test_repeated_headers_are_replayed(server, serve):
    app, state = make_app(server)
    http = serve(app)
    k = key()
    http.post("/cookies", headers={"Idempotency-Key": k})
    replay = http.post("/cookies", headers={"Idempotency-Key": k})
    assert replay.headers.get_list("set-cookie") == [
        "a=1; Path=/; SameSite=lax", "b=2; Path=/; SameSite=lax"]
    assert state["runs"] == 1


def test_requests_without_the_header_pass_through(server, serve):
    app, state = make_app(server)
    http = serve(app)
    assert http.post("/orders", json={"item": "a"}).status_code == 201
    assert http.post("/orders", json={"item": "a"}).status_code == 201
    assert http.get("/orders", headers={"Idempotency-Key": key()}).json() == {"runs": 3}
    assert state["runs"] == 3


def test_lifespan_events_pass_through(server, serve):
    app, state = make_app(server)
    serve(app)
    assert state["started"]


# --- Concurrent duplicates -------------------------------------------------

def start_slow_request(http, state, k):
    """Sends POST /slow with key `k` on a thread; returns once the app is in
    it. The thread puts the response in the returned dict."""
    first = {}
    url = str(http.base_url) + "/slow"
    thread = threading.Thread(target=lambda: first.update(
        response=httpx.post(url, headers={"Idempotency-Key": k}, timeout=10)))
    thread.start()
    assert state["entered"].wait(10)
    return thread, first


def test_a_concurrent_duplicate_is_409_with_retry_after_from_the_lease(server, serve):
    app, state = make_app(server, lease=30)
    http = serve(app)
    k = key()
    thread, first = start_slow_request(http, state, k)
    duplicate = http.post("/slow", headers={"Idempotency-Key": k})
    state["release"].set()
    thread.join()
    assert_problem(duplicate, 409,
                   "A request is outstanding for this Idempotency-Key")
    assert 25 <= int(duplicate.headers["retry-after"]) <= 30
    assert first["response"].status_code == 200
    assert state["runs"] == 1


def test_a_waiting_duplicate_gets_the_result(server, serve):
    app, state = make_app(server, wait=10)
    http = serve(app)
    k = key()
    thread, first = start_slow_request(http, state, k)
    threading.Timer(0.3, state["release"].set).start()
    duplicate = http.post("/slow", headers={"Idempotency-Key": k})
    thread.join()
    assert duplicate.status_code == 200
    assert duplicate.json() == {"slow": True}
    assert duplicate.headers["idempotent-replayed"] == "true"
    assert state["runs"] == 1


# --- Never run a handler twice ---------------------------------------------

def test_a_failing_background_task_neither_fails_nor_reruns_the_request(
        server, serve, caplog):
    caplog.set_level(logging.INFO, logger="idem.middleware")
    app, state = make_app(server)
    http = serve(app)
    k = key()
    first = http.post("/background-fails", headers={"Idempotency-Key": k})
    retry = http.post("/background-fails", headers={"Idempotency-Key": k})
    assert first.status_code == 201
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.content == first.content
    assert state["runs"] == 1
    logged = [r for r in caplog.records if r.name == "idem.middleware"
              and r.exc_info and "mail server" in str(r.exc_info[1])]
    assert len(logged) == 1


def test_a_slow_background_task_does_not_delay_the_response(server, serve):
    app, state = make_app(server)
    http = serve(app)
    started = time.monotonic()
    response = http.post("/background-slow", headers={"Idempotency-Key": key()})
    elapsed = time.monotonic() - started
    assert response.status_code == 201
    assert elapsed < 0.5, f"the response took {elapsed:.2f} s"
    assert not state["background_done"].is_set()
    assert state["background_done"].wait(5)  # It still runs, afterwards.


def test_a_send_that_fails_after_the_body_keeps_the_key_completed(
        server, serve):
    app, state = make_app(server)
    failed = []

    async def client_gone_once(scope, receive, send):
        # As servers that raise once the client has gone away.
        async def failing_send(message):
            if message["type"] == "http.response.body" and not failed:
                failed.append(True)
                raise OSError("the client went away")
            await send(message)

        await app(scope, receive, failing_send if scope["type"] == "http" else send)

    http = serve(client_gone_once)
    k = key()
    with pytest.raises(httpx.HTTPError):
        http.post("/orders", json={"item": "x"}, headers={"Idempotency-Key": k})
    retry = http.post("/orders", json={"item": "x"},
                      headers={"Idempotency-Key": k})
    assert failed
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert state["runs"] == 1


class SlowCompleteClient(idem.IdemClient):
    """The real client, with a Complete that takes 0.5 s to arrive."""

    def complete(self, *args, **kwargs):
        time.sleep(0.5)
        super().complete(*args, **kwargs)


def test_cancelled_while_completing_keeps_the_key_completed(server, serve):
    app, state = make_app(server, client=SlowCompleteClient(server))

    async def timeout_after_200ms(scope, receive, send):
        # As a request-timeout middleware: cancels the app mid-Complete.
        if scope["type"] != "http":
            return await app(scope, receive, send)
        try:
            await asyncio.wait_for(app(scope, receive, send), 0.2)
        except asyncio.TimeoutError:
            await send({"type": "http.response.start", "status": 504,
                        "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})

    http = serve(timeout_after_200ms)
    k = key()
    first = http.post("/orders", json={"item": "x"}, headers={"Idempotency-Key": k})
    assert first.status_code == 504
    with idem.IdemClient(server) as client:
        deadline = time.monotonic() + 5
        while client.lookup(state["namespace"], "anonymous/" + k).state != idem.COMPLETED:
            assert time.monotonic() < deadline, "the Complete never landed"
            time.sleep(0.05)
    retry = http.post("/orders", json={"item": "x"}, headers={"Idempotency-Key": k})
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert state["runs"] == 1


def test_an_app_exception_releases_the_key(server, serve):
    app, state = make_app(server)
    http = serve(app)
    k = key()
    assert http.post("/boom", headers={"Idempotency-Key": k}).status_code == 500
    retry = http.post("/boom", headers={"Idempotency-Key": k})
    assert retry.status_code == 200
    assert retry.json() == {"ok": 2}
    assert state["runs"] == 2


def test_an_unfinished_response_is_an_error_and_releases_the_key(server, serve):
    app, state = make_app(server)
    http = serve(app)
    k = key()
    first = http.post("/unfinished/", headers={"Idempotency-Key": k})
    retry = http.post("/unfinished/", headers={"Idempotency-Key": k})
    assert first.status_code == 500
    assert retry.status_code == 500
    assert "idempotent-replayed" not in retry.headers
    assert state["runs"] == 2  # Not stored, not stuck in progress.


def test_5xx_results_are_released(server, serve):
    app, state = make_app(server)
    http = serve(app)
    k = key()
    assert http.post("/flaky", headers={"Idempotency-Key": k}).status_code == 503
    retry = http.post("/flaky", headers={"Idempotency-Key": k})
    assert retry.status_code == 200
    assert "idempotent-replayed" not in retry.headers
    assert state["runs"] == 2


def test_5xx_results_are_stored_without_release_on_5xx(server, serve):
    app, state = make_app(server, release_on_5xx=False)
    http = serve(app)
    k = key()
    assert http.post("/flaky", headers={"Idempotency-Key": k}).status_code == 503
    retry = http.post("/flaky", headers={"Idempotency-Key": k})
    assert retry.status_code == 503
    assert retry.headers["idempotent-replayed"] == "true"
    assert state["runs"] == 1


# --- Requests rejected before the handler ----------------------------------

def test_a_validation_error_does_not_use_up_the_key(server, serve):
    app, state = make_app(server)
    http = serve(app)
    k = key()
    invalid = http.post("/validated", json={"item": "x"},
                        headers={"Idempotency-Key": k})
    corrected = http.post("/validated", json={"item": "x", "quantity": 2},
                          headers={"Idempotency-Key": k})
    retry = http.post("/validated", json={"item": "x", "quantity": 2},
                      headers={"Idempotency-Key": k})
    assert invalid.status_code == 422
    assert invalid.json()["detail"][0]["loc"] == ["body", "quantity"]
    assert corrected.status_code == 201
    assert "idempotent-replayed" not in corrected.headers
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert state["runs"] == 1


def test_the_apps_own_validation_handler_is_marked_too(server, serve):
    app, state = make_app(server)

    @app.exception_handler(RequestValidationError)
    def bad_request(request, exc):  # A plain function: run on a thread.
        return JSONResponse({"problem": "invalid order"}, status_code=400)

    http = serve(app)
    k = key()
    invalid = http.post("/validated", json={"item": "x"},
                        headers={"Idempotency-Key": k})
    corrected = http.post("/validated", json={"item": "x", "quantity": 2},
                          headers={"Idempotency-Key": k})
    assert invalid.status_code == 400
    assert invalid.json() == {"problem": "invalid order"}
    assert corrected.status_code == 201
    assert state["runs"] == 1


def test_mark_not_executed_releases_the_key(server, serve):
    app, state = make_app(server)
    http = serve(app)
    k = key()
    rejected = http.post("/checked?ok=0", headers={"Idempotency-Key": k})
    # The same key, the same request: it runs now, as the first did not.
    again = http.post("/checked?ok=0", headers={"Idempotency-Key": k})
    assert rejected.status_code == 400
    assert again.status_code == 400
    assert "idempotent-replayed" not in again.headers
    ok = http.post("/checked?ok=1", headers={"Idempotency-Key": k})
    assert ok.status_code == 201
    assert state["runs"] == 1


# --- The header ------------------------------------------------------------

def test_a_quoted_key_and_a_plain_token_are_the_same_key(server, serve):
    app, state = make_app(server)
    http = serve(app)
    k = key()
    plain = http.post("/orders", json={"item": "x"}, headers={"Idempotency-Key": k})
    quoted = http.post("/orders", json={"item": "x"},
                       headers={"Idempotency-Key": f'"{k}"'})
    assert plain.status_code == 201
    assert quoted.headers["idempotent-replayed"] == "true"
    assert state["runs"] == 1


def test_escapes_and_commas_in_a_quoted_key_are_part_of_the_key(server, serve):
    app, state = make_app(server)
    http = serve(app)
    k = key()
    sent = '"%s \\"quoted\\", back\\\\slash"' % k
    first = http.post("/orders", json={"item": "x"}, headers={"Idempotency-Key": sent})
    retry = http.post("/orders", json={"item": "x"}, headers={"Idempotency-Key": sent})
    assert first.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    with idem.IdemClient(server) as client:
        stored = client.lookup(state["namespace"],
                               'anonymous/%s "quoted", back\\slash' % k)
    assert stored.state == idem.COMPLETED


@pytest.mark.parametrize("value, why", [
    (b'"abc\\n"', "invalid escape"),
    (b'"caf\xe9"', "0xE9"),
    (b"caf\xe9", "0xE9"),
    (b'"abc', "unterminated"),
    (b'"abc" x', "after the key"),
    (b'"abc";p=1', "after the key"),
    (b"abc def", "after the key"),
    (b";abc", "unexpected character"),
    (b'""', "empty"),
    (b"", "empty"),
    (b"k" * 256, "256 characters"),
])
def test_an_invalid_key_is_a_400_problem_saying_why(server, serve, value, why):
    app, state = make_app(server)
    http = serve(app)
    response = http.post("/orders", json={"item": "x"},
                         headers=[(b"Idempotency-Key", value)])
    problem = assert_problem(response, 400, "Idempotency-Key is invalid")
    assert why in problem["detail"]
    assert state["runs"] == 0


@pytest.mark.parametrize("headers", [
    [("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
    [("Idempotency-Key", "a, b")],
    [("Idempotency-Key", '"a", "b"')],
])
def test_more_than_one_key_is_a_400_problem(server, serve, headers):
    app, state = make_app(server)
    http = serve(app)
    response = http.post("/orders", json={"item": "x"}, headers=headers)
    assert_problem(response, 400, "More than one Idempotency-Key")
    assert state["runs"] == 0


def test_the_length_limit_applies_to_the_clients_key(server, serve):
    app, state = make_app(server)
    http = serve(app)
    k = "k" * 255  # With the caller's scope prefixed, over 255 in all.
    headers = {"Idempotency-Key": k, "Authorization": "Bearer alice"}
    first = http.post("/orders", json={"item": "x"}, headers=headers)
    retry = http.post("/orders", json={"item": "x"}, headers=headers)
    assert first.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert state["runs"] == 1


def test_a_required_key_is_a_400_problem_when_missing(server, serve):
    app, state = make_app(server, require_key=True)
    http = serve(app)
    missing = http.post("/orders", json={"item": "a"})
    assert_problem(missing, 400, "Idempotency-Key is missing")
    assert state["runs"] == 0


def test_an_oversized_body_is_a_413_problem(server, serve):
    app, state = make_app(server, max_body_bytes=64, docs_url=DOCS)
    http = serve(app)
    big = http.post("/orders", json={"item": "x" * 100},
                    headers={"Idempotency-Key": key()})
    assert_problem(big, 413, "Request body too large", DOCS)
    assert state["runs"] == 0


def test_an_unreachable_store_is_a_503_problem(server, serve):
    unreachable = idem.IdemClient("127.0.0.1:1", attempts=1, timeout=1)
    app, state = make_app(server, client=unreachable, docs_url=DOCS)
    http = serve(app)
    response = http.post("/orders", json={"item": "x"},
                         headers={"Idempotency-Key": key()})
    assert_problem(response, 503, "Idempotency store unavailable", DOCS)
    assert state["runs"] == 0


# --- Per-caller scopes -----------------------------------------------------

def test_another_caller_with_the_same_key_never_gets_the_stored_response(
        server, serve):
    app, state = make_app(server)
    http = serve(app)
    k = key()
    alice = {"Idempotency-Key": k, "Authorization": "Bearer alice"}
    bob = {"Idempotency-Key": k, "Authorization": "Bearer bob"}
    alices = http.post("/orders", json={"item": "x"}, headers=alice)
    bobs = http.post("/orders", json={"item": "x"}, headers=bob)
    assert alices.json()["order"] == 1
    assert bobs.status_code == 201
    assert bobs.json()["order"] == 2  # Bob's request ran: not Alice's result.
    assert "idempotent-replayed" not in bobs.headers
    alices_retry = http.post("/orders", json={"item": "x"}, headers=alice)
    assert alices_retry.headers["idempotent-replayed"] == "true"
    assert alices_retry.json()["order"] == 1
    assert state["runs"] == 2


class TokenBackend(AuthenticationBackend):
    """Bearer tokens "<user>-<n>": the user's tokens rotate, the user stays."""

    async def authenticate(self, conn):
        token = conn.headers.get("authorization", "").removeprefix("Bearer ")
        if not token:
            return None
        return AuthCredentials(["authenticated"]), SimpleUser(
            token.rsplit("-", 1)[0])


def test_a_caller_bound_to_the_user_survives_a_rotated_token(server, serve):
    app, state = make_app(server, caller=lambda scope: scope["user"].username)
    # Added after the middleware, so it runs before it: scope["user"] is set.
    app.add_middleware(AuthenticationMiddleware, backend=TokenBackend())
    http = serve(app)
    k = key()
    first = http.post("/orders", json={"item": "x"},
                      headers={"Idempotency-Key": k, "Authorization": "Bearer alice-1"})
    rotated = http.post("/orders", json={"item": "x"},
                        headers={"Idempotency-Key": k, "Authorization": "Bearer alice-2"})
    bobs = http.post("/orders", json={"item": "x"},
                     headers={"Idempotency-Key": k, "Authorization": "Bearer bob-1"})
    assert first.status_code == 201
    assert rotated.headers["idempotent-replayed"] == "true"
    assert rotated.content == first.content
    assert "idempotent-replayed" not in bobs.headers
    assert bobs.json()["order"] == 2
    assert state["runs"] == 2


def test_key_func_replaces_the_per_caller_scope(server, serve):
    app, state = make_app(
        server, key_func=lambda scope, k: dict(scope["headers"]).get(
            b"x-tenant", b"none").decode() + "/" + k)
    http = serve(app)
    k = key()
    a = http.post("/orders", json={"item": "x"}, headers={
        "Idempotency-Key": k, "X-Tenant": "t1", "Authorization": "Bearer 1"})
    b = http.post("/orders", json={"item": "x"}, headers={
        "Idempotency-Key": k, "X-Tenant": "t1", "Authorization": "Bearer 2"})
    c = http.post("/orders", json={"item": "x"}, headers={
        "Idempotency-Key": k, "X-Tenant": "t2"})
    assert a.json()["order"] == 1
    assert b.headers["idempotent-replayed"] == "true"
    assert c.json()["order"] == 2


def test_caller_and_key_func_together_are_refused():
    with pytest.raises(ValueError):
        IdempotencyMiddleware(None, client=idem.IdemClient("127.0.0.1:1"),
                              caller=lambda scope: "x",
                              key_func=lambda scope, k: k)


# --- Fingerprints ----------------------------------------------------------

def post_raw(http, body: bytes, k: str):
    return http.post("/echo", content=body, headers={
        "Idempotency-Key": k, "Content-Type": "application/json"})


def test_the_json_fingerprint_ignores_member_order_and_whitespace(server, serve):
    app, state = make_app(server, fingerprint="json")
    http = serve(app)
    k = key()
    first = post_raw(http, b'{"a":1,"b":2}', k)
    reordered = post_raw(http, b'{ "b": 2, "a": 1 }', k)
    changed = post_raw(http, b'{"a":1,"b":3}', k)
    assert first.status_code == 200
    assert reordered.headers["idempotent-replayed"] == "true"
    assert reordered.content == first.content
    assert changed.status_code == 422
    assert state["runs"] == 1


def test_the_default_fingerprint_compares_bytes(server, serve):
    app, state = make_app(server)
    http = serve(app)
    k = key()
    assert post_raw(http, b'{"a":1,"b":2}', k).status_code == 200
    assert post_raw(http, b'{ "b": 2, "a": 1 }', k).status_code == 422


def test_a_fingerprint_function_decides_what_is_the_same_request(server, serve):
    app, state = make_app(
        server, fingerprint=lambda method, target, body: method.encode() + target)
    http = serve(app)
    k = key()
    assert post_raw(http, b"1", k).status_code == 200
    assert post_raw(http, b"2", k).headers["idempotent-replayed"] == "true"
    assert state["runs"] == 1


# --- The manual ------------------------------------------------------------

REPO = pathlib.Path(__file__).resolve().parents[3]


def test_the_manuals_example_is_the_example_file_and_behaves_as_shown(
        server, serve, monkeypatch):
    example = REPO / "client" / "python" / "examples" / "orders_app.py"
    manual = (REPO / "docs" / "http-middleware.md").read_text()
    assert example.read_text() in manual  # Printed whole, as it is.
    monkeypatch.setenv("IDEM_TARGET", server)
    printed = []  # The example's background task prints.
    monkeypatch.setattr("builtins.print", lambda *args: printed.append(args))
    spec = importlib.util.spec_from_file_location("orders_app", example)
    orders_app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(orders_app)
    http = serve(orders_app.app)
    k = key()  # The manual's "order-1", new in each run.
    book = {"item": "book", "quantity": 1}
    first = http.post("/orders", json=book, headers={"Idempotency-Key": f'"{k}"'})
    retry = http.post("/orders", json=book, headers={"Idempotency-Key": f'"{k}"'})
    other = http.post("/orders", json={"item": "book", "quantity": 2},
                      headers={"Idempotency-Key": f'"{k}"'})
    bobs = http.post("/orders", json=book, headers={
        "Idempotency-Key": k, "Authorization": "Bearer bob"})
    assert (first.status_code, first.json()["id"]) == (201, 1)
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.content == first.content
    assert_problem(other, 422, "Idempotency-Key is already used",
                   "https://api.example.com/docs/idempotency")
    assert (bobs.status_code, bobs.json()["id"]) == (201, 2)
    k2 = key()
    invalid = http.post("/orders", json={"item": "pen"},
                        headers={"Idempotency-Key": f'"{k2}"'})
    corrected = http.post("/orders", json={"item": "pen", "quantity": 3},
                          headers={"Idempotency-Key": f'"{k2}"'})
    assert invalid.status_code == 422
    assert (corrected.status_code, corrected.json()["id"]) == (201, 3)
    assert len(orders_app.orders) == 3
    deadline = time.monotonic() + 5
    while len(printed) < 3:  # Once per order, after its response.
        assert time.monotonic() < deadline, printed
        time.sleep(0.01)
    assert printed[-1] == ("order 3 created: send the e-mail",)
