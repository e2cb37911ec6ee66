"""Content negotiation of the chat turn: the SSE stream unless the client prefers JSON."""

from __future__ import annotations

import pytest
from django.test import RequestFactory

from conversations.streaming.views import wants_event_stream

STREAM, JSON = True, False


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, STREAM),  # no Accept header at all
        ("", STREAM),
        ("*/*", STREAM),  # curl's and httpx's default
        ("text/*", STREAM),
        ("text/event-stream", STREAM),
        ("text/event-stream, application/json", STREAM),
        ("application/json, text/event-stream", STREAM),  # a tie: the default wins
        ("application/json;q=0.5, text/event-stream", STREAM),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", STREAM),
        ("image/png", STREAM),  # nothing we serve is named: the default
        ("garbage", STREAM),
        ("; ;, ,;q=", STREAM),
        ("application/json", JSON),
        ("application/json, text/event-stream;q=0.5", JSON),
        ("text/event-stream;q=0.5, application/json", JSON),
        ("application/json, */*;q=0.1", JSON),
        ("application/*", JSON),
        ("text/event-stream;q=0, application/json", JSON),
    ],
)
def test_accept_header_table(accept: str | None, expected: bool) -> None:
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    request = RequestFactory().post("/api/v1/conversations/stream", **headers)
    assert ("HTTP_ACCEPT" in request.META) is (accept is not None)
    assert wants_event_stream(request) is expected
