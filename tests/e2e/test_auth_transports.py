"""One authentication path for every transport, end to end (docs/api.md#authentication).

A real daphne with OIDC bearer auth on (against the fake provider's JWKS over HTTP) and
real REST, SSE and WebSocket clients: the same credentials get the same answer and the
same log line everywhere, an open socket stops when its credentials stop holding, one
slow JWKS fetch stalls nobody else, sockets and resumes are capped, and a socket's Origin
must match host and port.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from rest_framework.authtoken.models import Token
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from accounts.models import OIDCIdentity
from tests import factories
from tests.e2e.test_websocket import chat, closed_code, recv, token_socket, ws_connect, ws_url
from tests.fakes.oidc_server import AUDIENCE, ISSUER, FakeOIDCProvider
from tests.sse_client import stream

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeOIDCProvider]:
    with FakeOIDCProvider() as fake:
        yield fake


@pytest.fixture
def server(daphne_factory, transactional_db, provider):
    """daphne with bearer auth on; no leeway on ``exp``; small socket and resume caps."""
    provider.delay = 0.0
    return daphne_factory(
        MOCK_TOKEN_DELAY_MS="2",
        OIDC_OP_ISSUER=ISSUER,
        OIDC_OP_JWKS_ENDPOINT=provider.jwks_url,
        OIDC_API_AUDIENCE=AUDIENCE,
        OIDC_LEEWAY_SECONDS="0",
        CHAT_MAX_SOCKETS="3",
        CHAT_MAX_FOLLOWERS="1",
    )


def body(context: Any, text: str = "hello") -> dict[str, Any]:
    return {"context_id": str(context.id), "messages": [{"role": "user", "content": text}]}


# --- the same answer on REST, SSE and WebSocket --------------------------------------------------
def _rest(server: Any, authorization: str, context: Any) -> tuple[int, str]:
    response = httpx.get(
        f"{server.url}/api/v1/contexts/", headers={"Authorization": authorization}, timeout=10
    )
    return response.status_code, response.json().get("code", "ok")


def _sse(server: Any, authorization: str, context: Any) -> tuple[int, str]:
    result = stream(
        "POST",
        f"{server.url}/api/v1/conversations/stream",
        json_body=body(context),
        headers={"Authorization": authorization},
    )
    if result.status_code != 200:
        return result.status_code, result.body["code"]
    assert result.names()[-1] == "done"
    return 200, "ok"


def _ws(server: Any, authorization: str, context: Any) -> tuple[int, str]:
    scheme, credentials = authorization.split(" ", 1)
    with ws_connect(server, subprotocols=[scheme.lower(), credentials]) as ws:
        try:  # refused credentials: one error frame at once, then 4401
            first = json.loads(ws.recv(timeout=0.5))
        except TimeoutError:
            ws.send(json.dumps(chat(context, "hello")))
            first = recv(ws)
        if first["type"] == "error" and "id" not in first:
            if first["status"] == 401:
                assert closed_code(ws) == 4401
            return first["status"], first["code"]
        while first["type"] != "done":
            first = recv(ws)
    return 200, "ok"


TRANSPORTS: dict[str, Callable[[Any, str, Any], tuple[int, str]]] = {
    "rest": _rest,
    "sse": _sse,
    "ws": _ws,
}


def _rejections(server: Any) -> list[dict[str, Any]]:
    lines = []
    for line in server.output().splitlines():
        if line.startswith("{") and '"auth.rejected"' in line:
            lines.append(json.loads(line))
    return lines


def test_a_table_of_credentials_gets_the_same_answer_on_every_transport(server, provider):
    user = factories.make_user("alice")
    context = factories.make_context(user)
    deleted_user = factories.make_user("deleted")
    deleted_key = factories.make_token(deleted_user)
    Token.objects.filter(key=deleted_key).delete()
    inactive = factories.make_user("inactive", is_active=False)
    credentials = {
        "valid token": (f"Token {factories.make_token(user)}", 200, "ok"),
        "valid jwt": (f"Bearer {provider.issue(sub='jwt-alice')}", 200, "ok"),
        "deleted token": (f"Token {deleted_key}", 401, "authentication_failed"),
        "inactive user": (
            f"Token {factories.make_token(inactive)}",
            401,
            "authentication_failed",
        ),
        "expired jwt": (
            f"Bearer {provider.issue(exp=int(time.time()) - 5, iat=None, nbf=None)}",
            401,
            "authentication_failed",
        ),
        "wrong audience": (
            f"Bearer {provider.issue(aud='another-api')}",
            401,
            "authentication_failed",
        ),
    }
    for name, (authorization, status, code) in credentials.items():
        for transport, call in TRANSPORTS.items():
            expected = (status, code)
            if name == "valid jwt" and transport != "rest":
                # authenticated, as a user who does not own alice's context: 404
                expected = (404, "not_found")
            got = call(server, authorization, context)
            assert got == expected, (name, transport, got)
    assert OIDCIdentity.objects.filter(issuer=ISSUER, subject="jwt-alice").count() == 1
    # one log line per rejection, the same on every transport, never the credentials
    time.sleep(0.3)
    rejected = _rejections(server)
    reasons = {(line["transport"], line["reason"]) for line in rejected}
    for transport in TRANSPORTS:
        expected = {"unknown_token", "inactive_user", "expired", "bad_audience"}
        assert {r for t, r in reasons if t == transport} >= expected, (transport, reasons)
    assert deleted_key not in server.output()


NO_SUCH_CANCEL = {"type": "cancel", "message_id": "00000000-0000-0000-0000-000000000000"}


# --- an open socket outlives nothing -------------------------------------------------------------
def _chat_ok(ws: Any, context: Any) -> None:
    ws.send(json.dumps(chat(context, "hello")))
    event = recv(ws)
    while event["type"] != "done":
        assert event["type"] != "error", event
        event = recv(ws)


def _refused_and_closed(ws: Any, context: Any) -> None:
    ws.send(json.dumps(chat(context, "are you there?")))
    error = recv(ws)
    assert error["type"] == "error" and error["status"] == 401, error
    assert error["request"] == "chat"
    assert closed_code(ws) == 4401


def test_open_socket_stops_when_its_token_is_deleted(server):
    user = factories.make_user("bob")
    context = factories.make_context(user)
    key = factories.make_token(user)
    with token_socket(server, key) as ws:
        _chat_ok(ws, context)
        Token.objects.filter(key=key).delete()
        _refused_and_closed(ws, context)
    assert context.conversations.count() == 1  # the refused frame started no turn


def test_open_socket_stops_when_its_user_is_deactivated(server):
    user = factories.make_user("carol")
    context = factories.make_context(user)
    with token_socket(server, factories.make_token(user)) as ws:
        _chat_ok(ws, context)
        type(user).objects.filter(pk=user.pk).update(is_active=False)
        _refused_and_closed(ws, context)


def test_open_socket_stops_when_its_jwt_expires(server, provider):
    token = provider.issue(sub="short-lived", exp=int(time.time()) + 3)
    with ws_connect(server, subprotocols=["bearer", token]) as ws:
        ws.send(json.dumps(NO_SUCH_CANCEL))
        assert recv(ws)["code"] == "not_found"  # authenticated: the frame was served
        time.sleep(4.2)
        ws.send(json.dumps(NO_SUCH_CANCEL))
        error = recv(ws)
        assert error["status"] == 401 and error["code"] == "authentication_failed"
        assert closed_code(ws) == 4401


# --- a slow JWKS fetch stalls nobody else --------------------------------------------------------
def test_a_slow_jwks_fetch_holds_no_other_request(server, provider):
    user = factories.make_user("dora")
    context = factories.make_context(user)
    key = factories.make_token(user)
    # keys held, then a new key that only a slow fetch can bring
    assert _rest(server, f"Bearer {provider.issue(sub='warm')}", context)[0] == 200
    old_key = provider.current_key
    new_key = provider.rotate(keep_old=True)
    provider.delay = 2.0  # under the server's 3 s JWKS timeout
    slow: dict[str, Any] = {}

    def slow_request() -> None:
        started = time.monotonic()
        slow["answer"] = _sse(server, f"Bearer {provider.issue(key=new_key)}", context)
        slow["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=slow_request)
    thread.start()
    try:
        time.sleep(0.5)  # the slow fetch is in flight
        started = time.monotonic()
        result = stream(
            "POST", f"{server.url}/api/v1/conversations/stream", token=key, json_body=body(context)
        )
        others = time.monotonic() - started
        held_jwt = _rest(server, f"Bearer {provider.issue(sub='warm', key=old_key)}", context)
        held = time.monotonic() - started
    finally:
        thread.join(15)
        provider.delay = 0.0
    assert result.names()[-1] == "done"
    assert held_jwt[0] == 200
    assert slow["seconds"] >= 1.8  # it did wait for its key...
    assert slow["answer"] == (404, "not_found")  # ...and was then authenticated
    # ...while a whole turn of another user, and a request with a held key, did not
    assert others < 1.2, others
    assert held < 1.5, held


# --- caps ----------------------------------------------------------------------------------------
def test_sockets_per_user_are_capped(server):
    user = factories.make_user("erin")
    context = factories.make_context(user)
    key = factories.make_token(user)
    with contextlib.ExitStack() as open_sockets:
        first = open_sockets.enter_context(token_socket(server, key))
        for _ in range(2):
            open_sockets.enter_context(token_socket(server, key))
        with token_socket(server, key) as extra:
            error = recv(extra)
            assert error["code"] == "too_many_sockets" and error["status"] == 429
            assert closed_code(extra) == 4429
        first.close()
        time.sleep(0.3)
        with token_socket(server, key) as again:
            _chat_ok(again, context)


def test_resumed_streams_per_user_are_capped(server):
    user = factories.make_user("finn")
    context = factories.make_context(user)
    key = factories.make_token(user)
    started = stream(
        "POST",
        f"{server.url}/api/v1/conversations/stream",
        token=key,
        json_body=body(context, "[[mock:slow:40]] [[mock:long:100]] hello"),
        stop_after=1,
    )
    message_id = started.first("metadata").data["message_id"]
    url = f"{server.url}/api/v1/messages/{message_id}/stream"
    headers = {"Authorization": f"Token {key}", "Accept": "text/event-stream"}
    with (
        httpx.Client(timeout=30) as client,
        client.stream("GET", url, headers=headers) as first,
    ):
        assert first.status_code == 200
        second = httpx.get(url, headers=headers, timeout=10)
        assert second.status_code == 429
        assert second.json()["code"] == "too_many_streams"
        assert second.headers["Retry-After"]
    time.sleep(0.3)
    again = stream("GET", url, token=key)
    assert again.status_code == 200 and again.names()[-1] == "done"


# --- origin --------------------------------------------------------------------------------------
def test_origin_must_match_host_and_port(server):
    key = factories.make_token(factories.make_user("gus"))
    port = server.url.rsplit(":", 1)[1]
    other_port = str(int(port) + 1 if port != "65535" else 1024)
    for origin in (f"http://127.0.0.1:{other_port}", "https://127.0.0.1", "http://evil.example"):
        with pytest.raises(InvalidStatus) as info:
            connect(
                ws_url(server),
                origin=origin,
                subprotocols=["token", key],
                proxy=None,
                open_timeout=10,
            )
        assert info.value.response.status_code == 403, origin
    with ws_connect(server, subprotocols=["token", key]) as ws:  # Origin == the server's
        assert ws.subprotocol == "token"
