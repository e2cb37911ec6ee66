"""WebSocket pieces without a server: credentials from a scope, event frames."""

from __future__ import annotations

import json

from accounts.ws import credentials_from_scope
from conversations.streaming.transports.ws import encode_ws_event


def test_subprotocol_pair_wins_and_names_the_scheme_to_accept():
    scope = {
        "subprotocols": ["chat.v1", "token", "abc123"],
        "headers": [(b"authorization", b"Token other")],
    }
    assert credentials_from_scope(scope) == ("Token abc123", "token")
    assert credentials_from_scope({"subprotocols": ["Bearer", "a.b.c"]}) == (
        "Bearer a.b.c",
        "Bearer",
    )


def test_header_for_non_browser_clients_and_nothing_otherwise():
    scope = {"subprotocols": ["token"], "headers": [(b"Authorization", b"Token k")]}
    assert credentials_from_scope(scope) == ("Token k", None)
    assert credentials_from_scope({"headers": [(b"cookie", b"sessionid=x")]}) == (None, None)


def test_event_frames():
    chunk = json.loads(encode_ws_event(7, "chunk", 'a "b"\n🎉'))
    assert chunk == {"type": "chunk", "id": 7, "content": 'a "b"\n🎉'}
    done = json.loads(encode_ws_event(9, "done", {"finish_reason": "stop"}))
    assert done == {"type": "done", "id": 9, "finish_reason": "stop"}


def test_lone_surrogate_travels_as_an_escape():
    frame = encode_ws_event(3, "chunk", "x\ud800")
    frame.encode()  # a valid text frame
    assert json.loads(frame)["content"] == "x\ud800"
