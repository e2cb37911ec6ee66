"""Hostile input beyond tests/e2e/test_stream_refusals.py, against a real daphne.

Every case must answer a clear 4xx JSON body with a ``code`` -- never a 500, never a hang:
huge bodies (with and without ``Content-Length``), deep nesting on the REST endpoints,
wrong content types, invalid UTF-8, NUL characters, ids that are not UUIDs in every id
field, a client-kept history of 100 messages of 10,000 characters, odd ``Last-Event-ID``.
"""

from __future__ import annotations

import json
import socket
import time
import uuid

import httpx
import pytest

from conversations.models import Context, Message
from tests import factories

pytestmark = pytest.mark.e2e

TEN_MB = 10 * 1024 * 1024


@pytest.fixture
def data(transactional_db):
    alice = factories.make_user("alice")
    context = factories.make_context(alice, name="Work")
    conversation = factories.make_conversation(context)
    reply = factories.make_message(
        conversation, role="assistant", content="Done.", status="complete", finish_reason="stop"
    )
    flow = factories.make_flow(context, title="Book a flight")
    return {
        "user": alice,
        "token": factories.make_token(alice),
        "context": context,
        "conversation": conversation,
        "reply": reply,
        "flow": flow,
    }


def auth(data, **headers):
    return {"Authorization": f"Token {data['token']}", **headers}


def assert_clear_4xx(response: httpx.Response, *statuses: int, code: str | None = None):
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    body = response.json()
    assert isinstance(body.get("code"), str) and body["code"], body
    assert isinstance(body.get("detail"), str), body
    if code is not None:
        assert body["code"] == code, body
    return body


# --- sizes -------------------------------------------------------------------------------


def raw_exchange(server, head: str, chunks, timeout: float = 20.0) -> tuple[int, bytes, float]:
    """Send ``head`` and then ``chunks`` over a socket; return status, body, seconds taken.

    Stops sending as soon as the server answers or closes (an early refusal).
    """
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    started = time.monotonic()
    received = b""
    with sock:
        sock.sendall(head.encode())
        sock.setblocking(False)
        for chunk in chunks:
            try:
                data = sock.recv(65536)
                if data:
                    received += data
                    break
            except BlockingIOError:
                pass
            except OSError:
                break
            try:
                sock.setblocking(True)
                sock.sendall(chunk)
                sock.setblocking(False)
            except OSError:  # the server answered and closed: stop sending
                break
        sock.setblocking(True)
        sock.settimeout(timeout)
        while True:
            try:
                data = sock.recv(65536)
            except (TimeoutError, OSError):
                break
            if not data:
                break
            received += data
            if b"\r\n\r\n" in received:
                head_part, _, rest = received.partition(b"\r\n\r\n")
                length = [
                    int(line.split(b":", 1)[1])
                    for line in head_part.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ]
                if length and len(rest) >= length[0]:
                    break
    elapsed = time.monotonic() - started
    assert received, f"no answer within {timeout}s"
    status = int(received.split(b" ", 2)[1])
    body = received.partition(b"\r\n\r\n")[2]
    if b"transfer-encoding: chunked" in received.partition(b"\r\n\r\n")[0].lower():
        from tests.sse_client import dechunk

        body = dechunk(body)
    return status, body, elapsed


def chunked_body(total: int, piece: int = 64 * 1024):
    prefix = b'{"conversation_id": "00000000-0000-0000-0000-000000000000", "message": "'
    yield f"{len(prefix):x}\r\n".encode() + prefix + b"\r\n"
    sent = len(prefix)
    block = b"x" * piece
    while sent < total:
        yield f"{len(block):x}\r\n".encode() + block + b"\r\n"
        sent += len(block)
    tail = b'"}'
    yield f"{len(tail):x}\r\n".encode() + tail + b"\r\n0\r\n\r\n"


def chat_head(data, extra: str) -> str:
    return (
        "POST /api/v1/conversations/stream HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        f"Authorization: Token {data['token']}\r\n"
        "Content-Type: application/json\r\n"
        "Accept: text/event-stream\r\n"
        "Connection: close\r\n"
        f"{extra}\r\n"
    )


def test_ten_megabytes_with_content_length_is_413_quickly(daphne, data):
    status, body, elapsed = raw_exchange(
        daphne,
        chat_head(data, f"Content-Length: {TEN_MB}\r\n"),
        (b"x" * (256 * 1024) for _ in range(TEN_MB // (256 * 1024))),
    )
    assert status == 413 and json.loads(body)["code"] == "payload_too_large"
    assert elapsed < 15


def test_ten_megabytes_chunked_without_content_length_is_refused(daphne, data):
    """No Content-Length: the body limit must still hold (413 or 400), without a hang."""
    status, body, elapsed = raw_exchange(
        daphne, chat_head(data, "Transfer-Encoding: chunked\r\n"), chunked_body(TEN_MB)
    )
    assert status in (413, 400), (status, body[:300])
    assert json.loads(body)["code"], body
    assert elapsed < 15
    assert Message.objects.count() == 1  # only the fixture's reply


def test_chunked_body_just_over_the_chat_limit_is_413(daphne, data, settings):
    """Between CHAT_MAX_BODY_BYTES (512,000) and Django's 2.5 MB read limit: still 413."""
    status, body, _ = raw_exchange(
        daphne, chat_head(data, "Transfer-Encoding: chunked\r\n"), chunked_body(600_000)
    )
    assert status == 413, (status, body[:300])
    assert json.loads(body)["code"] == "payload_too_large"


def test_a_large_chunked_body_is_refused_before_django_reads_it(daphne_factory, data):
    """40 MB without Content-Length: the ASGI guard answers 413 as soon as the count passes
    the limit, before Django spools the body or parses it.

    daphne itself (Twisted) takes in a whole request before the application sees any of
    it, so the process still holds the body briefly; in production nginx's
    ``client_max_body_size`` refuses it first (deploy/nginx.conf, docs/reliability.md).
    """
    server = daphne_factory(MOCK_TOKEN_DELAY_MS="2", HOSTILE_BODY_PROBE="1")
    started = time.monotonic()
    status, body, _ = raw_exchange(
        server, chat_head(data, "Transfer-Encoding: chunked\r\n"), chunked_body(40 * 1024 * 1024)
    )
    assert status == 413, (status, body[:300])
    assert json.loads(body)["code"] == "payload_too_large"
    assert time.monotonic() - started < 15
    assert Message.objects.count() == 1  # only the fixture's reply


def test_history_of_100_messages_of_10000_characters_is_413(daphne, data):
    messages = [
        {"role": "user" if i % 2 else "assistant", "content": "y" * 10_000} for i in range(100)
    ]
    messages[-1]["role"] = "user"
    body = json.dumps({"context_id": str(data["context"].id), "messages": messages})
    assert len(body) > 1_000_000
    response = httpx.post(
        f"{daphne.url}/api/v1/conversations/stream",
        content=body,
        headers=auth(data, **{"Content-Type": "application/json"}),
        timeout=20,
    )
    assert_clear_4xx(response, 413, code="payload_too_large")
    assert Message.objects.count() == 1  # only the fixture's reply


def test_huge_rest_body_is_refused(daphne, data):
    response = httpx.post(
        f"{daphne.url}/api/v1/contexts/",
        content=b'{"name": "' + b"x" * TEN_MB + b'"}',
        headers=auth(data, **{"Content-Type": "application/json"}),
        timeout=20,
    )
    assert_clear_4xx(response, 400, 413)
    assert Context.objects.count() == 1


# --- malformed bodies on the REST endpoints --------------------------------------------

DEEP = b'{"name": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def rest_writes(data):
    return [
        ("POST", "/api/v1/contexts/"),
        ("PATCH", f"/api/v1/contexts/{data['context'].id}/"),
        ("PATCH", f"/api/v1/conversations/{data['conversation'].id}/"),
        ("PATCH", f"/api/v1/flows/{data['flow'].id}/"),
    ]


@pytest.mark.parametrize(
    ("raw", "content_type", "statuses"),
    [
        (DEEP, "application/json", (400,)),
        (b'{"name": "\xff\xfe"}', "application/json", (400,)),
        (b"{not json", "application/json", (400,)),
        (b"name=x", "application/x-www-form-urlencoded", (415,)),
        (b"name=x", "text/plain", (415,)),
        (b'{"name": "x"}', "application/xml", (415,)),
        (b'{"name": "a\\u0000b", "title": "a\\u0000b"}', "application/json", (400,)),
        (b'{"name": 5, "title": 5}', "application/json", (400,)),
        (b"[1, 2]", "application/json", (400,)),
        (b"null", "application/json", (400,)),
    ],
    ids=["deep", "bad-utf8", "not-json", "form", "text", "xml", "nul", "number", "list", "null"],
)
def test_malformed_rest_bodies_are_clear_4xx(daphne, data, raw, content_type, statuses):
    for method, path in rest_writes(data):
        response = httpx.request(
            method,
            f"{daphne.url}{path}",
            content=raw,
            headers=auth(data, **{"Content-Type": content_type}),
            timeout=20,
        )
        assert_clear_4xx(response, *statuses)
    data["context"].refresh_from_db()
    assert data["context"].name == "Work"


def test_nul_in_the_chat_message_is_400_naming_the_field(daphne, data):
    for body, field in (
        (
            {
                "context_id": str(data["context"].id),
                "messages": [{"role": "user", "content": "a\x00"}],
            },
            "messages",
        ),
        ({"conversation_id": str(data["conversation"].id), "message": "a\x00b"}, "message"),
    ):
        response = httpx.post(
            f"{daphne.url}/api/v1/conversations/stream", json=body, headers=auth(data), timeout=20
        )
        assert field in assert_clear_4xx(response, 400, code="invalid")["errors"]
    assert Message.objects.count() == 1  # only the fixture's reply


def test_deeply_nested_chat_values_are_400(daphne, data):
    nested = "[" * 50_000 + "]" * 50_000
    for raw in (
        f'{{"context_id": {nested}, "messages": []}}',
        f'{{"context_id": "{data["context"].id}", '
        f'"messages": [{{"role": "user", "content": {nested}}}]}}',
        f'{{"conversation_id": "{data["conversation"].id}", "message": {{"a": {nested}}}}}',
    ):
        response = httpx.post(
            f"{daphne.url}/api/v1/conversations/stream",
            content=raw,
            headers=auth(data, **{"Content-Type": "application/json"}),
            timeout=20,
        )
        assert_clear_4xx(response, 400)


# --- ids that are not UUIDs -------------------------------------------------------------

NOT_UUIDS = [
    "x",
    "1",
    "00000000-0000-0000-0000",
    "../../etc/passwd",
    "%00",
    "' OR 1=1 --",
    "é" * 40,
]


@pytest.mark.parametrize("bad", NOT_UUIDS)
def test_chat_body_ids_that_are_not_uuids_are_400_naming_the_field(daphne, data, bad):
    for body, field in (
        ({"context_id": bad, "messages": [{"role": "user", "content": "hi"}]}, "context_id"),
        ({"conversation_id": bad, "message": "hi"}, "conversation_id"),
        (
            {
                "context_id": str(data["context"].id),
                "conversation_id": bad,
                "messages": [{"role": "user", "content": "hi"}],
            },
            "conversation_id",
        ),
        (
            {"conversation_id": str(data["conversation"].id), "context_id": bad, "message": "hi"},
            "context_id",
        ),
    ):
        response = httpx.post(
            f"{daphne.url}/api/v1/conversations/stream", json=body, headers=auth(data), timeout=20
        )
        assert field in assert_clear_4xx(response, 400, code="invalid")["errors"]
    assert Message.objects.count() == 1


@pytest.mark.parametrize("bad", [*NOT_UUIDS, str(uuid.uuid4())])
def test_path_ids_that_are_not_uuids_are_404(daphne, data, bad):
    quoted = httpx.URL(f"{daphne.url}/").copy_with(path=f"/{bad}").raw_path.decode()[1:]
    for method, template in (
        ("GET", "/api/v1/contexts/{}/"),
        ("PATCH", "/api/v1/contexts/{}/"),
        ("DELETE", "/api/v1/contexts/{}/"),
        ("GET", "/api/v1/contexts/{}/flows/"),
        ("GET", "/api/v1/conversations/{}/"),
        ("PATCH", "/api/v1/conversations/{}/"),
        ("DELETE", "/api/v1/conversations/{}/"),
        ("GET", "/api/v1/conversations/{}/messages/"),
        ("GET", "/api/v1/messages/{}/"),
        ("GET", "/api/v1/messages/{}/stream"),
        ("POST", "/api/v1/messages/{}/cancel"),
        ("GET", "/api/v1/flows/{}/"),
        ("PATCH", "/api/v1/flows/{}/"),
        ("DELETE", "/api/v1/flows/{}/"),
    ):
        url = f"{daphne.url}{template.format(quoted)}"
        response = httpx.request(
            method,
            url,
            json={"title": "x"} if method == "PATCH" else None,
            headers=auth(data),
            timeout=20,
        )
        if "/" in bad:  # a slash changes the route itself: any clear 404 will do
            assert response.status_code == 404, (method, url, response.text[:200])
            continue
        assert_clear_4xx(response, 404, code="not_found")


@pytest.mark.parametrize("bad", NOT_UUIDS)
def test_query_ids_that_are_not_uuids_are_400(daphne, data, bad):
    for path in ("/api/v1/conversations/", "/api/v1/flows/"):
        response = httpx.get(
            f"{daphne.url}{path}", params={"context_id": bad}, headers=auth(data), timeout=20
        )
        assert "context_id" in assert_clear_4xx(response, 400, code="invalid")["errors"]


@pytest.mark.parametrize(
    "last_event_id", ["abc", "-5", "1e9", "99999999999999999999999", "9" * 5000, " 3 ", "\x7f"]
)
def test_odd_last_event_ids_do_not_break_resume(daphne, data, last_event_id):
    response = httpx.get(
        f"{daphne.url}/api/v1/messages/{data['reply'].id}/stream",
        params={"last_event_id": last_event_id},
        headers=auth(data, Accept="text/event-stream"),
        timeout=20,
    )
    assert response.status_code == 200 and response.text.startswith("retry:")
    ids = [int(line[4:]) for line in response.text.splitlines() if line.startswith("id: ")]
    try:
        after = max(int(last_event_id.strip()), 0)
    except ValueError:
        after = 0  # malformed: a full replay
    assert all(i > after for i in ids)
    if after == 0:  # the whole stored reply, ending with done
        assert "event: done" in response.text and "Done." in response.text
