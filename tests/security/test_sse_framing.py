"""SSE framing: any text survives ``encode_chunk``/``encode_event`` and a standard parser.

Two parsers read the bytes: the WHATWG "event stream interpretation" algorithm written out
below (lines end at CRLF, LF or CR only; ``data`` lines join with LF; a blank line
dispatches), and httpx-sse's own line and event decoders fed the stream in arbitrary
pieces, split even inside a UTF-8 sequence. Both must give back exactly the text, for
newlines, CR, CRLF, NUL, emoji, lines that look like ``data:``/``event:``/``id:``/``:``,
Unicode line separators and lone surrogates (the encoder falls back to ASCII escapes).
"""

from __future__ import annotations

import codecs
import itertools
import json

import httpx
import pytest
from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from hypothesis import given, settings
from hypothesis import strategies as st

from conversations.models import Message
from conversations.streaming.transports.sse import KEEPALIVE, encode_chunk, encode_event, retry_line
from tests import factories

TRICKY = [
    "\n",
    "\r",
    "\r\n",
    "\n\n",
    "\x00",
    "data: x",
    "event: done",
    "id: 99",
    ": comment",
    "retry: 1",
    "\u2028",
    "\u2029",
    "\x85",
    "\x0b",
    "\x0c",
    "\x1c",
    "\ufeff",
    "😀",
    "👩‍👩‍👧",
    '"',
    "\\",
    "\\u0000",
    "</script>",
]

texts = st.lists(st.one_of(st.sampled_from(TRICKY), st.text(max_size=20)), max_size=12).map("".join)
# Every code point, lone surrogates included.
any_code_points = st.text(st.characters(exclude_categories=()), max_size=40)


def whatwg_parse(stream: bytes) -> list[dict[str, str]]:
    """The WHATWG event stream interpretation (HTML spec, 9.2.6), for complete streams."""
    text = stream.decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines: list[str] = []
    position = 0
    while position < len(text):
        ends = [i for i in (text.find("\r", position), text.find("\n", position)) if i >= 0]
        if not ends:
            break  # an unterminated last line is discarded
        end = min(ends)
        lines.append(text[position:end])
        position = end + (2 if text.startswith("\r\n", end) else 1)
    events: list[dict[str, str]] = []
    data: list[str] = []
    event_type = ""
    last_id = ""
    for line in lines:
        if line == "":
            if data:
                events.append(
                    {"id": last_id, "event": event_type or "message", "data": "\n".join(data)}
                )
            data, event_type = [], ""
            continue
        if line.startswith(":"):
            continue
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            event_type = value
        elif field == "id" and "\x00" not in value:
            last_id = value
    return events


def httpx_sse_parse(stream: bytes, cuts: list[int]) -> list[dict[str, str]]:
    """httpx-sse's decoders, fed the bytes in pieces cut at ``cuts``."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines_decoder, events_decoder = SSELineDecoder(), SSEDecoder()
    events: list[dict[str, str]] = []
    bounds = [0, *sorted({c % (len(stream) + 1) for c in cuts}), len(stream)]
    lines: list[str] = []
    for start, end in itertools.pairwise(bounds):
        text = decoder.decode(stream[start:end])
        if text:
            lines += lines_decoder.decode(text)
    lines += lines_decoder.flush()
    for line in lines:
        sse = events_decoder.decode(line)
        if sse is not None and sse.data:
            events.append({"id": sse.id, "event": sse.event, "data": sse.data})
    return events


def a_stream(content: str) -> bytes:
    return b"".join(
        [
            retry_line(2000),
            encode_event(1, "metadata", {"message_id": "m"}),
            encode_event(2, "typing", {"status": "start"}),
            KEEPALIVE,
            encode_chunk(7, content),
            encode_event(8, "chunk", {"content": content}),
            encode_event(9, "done", {"note": content}),
        ]
    )


def check(events: list[dict[str, str]], content: str) -> None:
    assert [(e["id"], e["event"]) for e in events] == [
        ("1", "metadata"),
        ("2", "typing"),
        ("7", "chunk"),
        ("8", "chunk"),
        ("9", "done"),
    ]
    payloads = [json.loads(e["data"]) for e in events]
    assert [p["type"] for p in payloads] == ["metadata", "typing", "chunk", "chunk", "done"]
    assert payloads[2]["content"] == content
    assert payloads[3]["content"] == content
    assert payloads[4]["note"] == content


@settings(max_examples=400, deadline=None, database=None)
@given(content=texts, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8))
def test_any_text_survives_framing_and_parsing(content, cuts):
    stream = a_stream(content)
    for frame in stream.split(b"\n\n")[:-1]:
        # One event is one block of single lines: no raw CR inside, data on one line.
        assert b"\r" not in frame
        assert frame.count(b"\ndata: ") + frame.startswith(b"data: ") <= 1
    check(whatwg_parse(stream), content)
    check(httpx_sse_parse(stream, cuts), content)


@settings(max_examples=300, deadline=None, database=None)
@given(content=any_code_points, cuts=st.lists(st.integers(min_value=0, max_value=400)))
def test_every_code_point_survives_including_lone_surrogates(content, cuts):
    stream = a_stream(content)  # always valid UTF-8, even for a lone surrogate
    check(whatwg_parse(stream), content)
    check(httpx_sse_parse(stream, cuts), content)


def test_a_lone_surrogate_is_sent_as_an_ascii_escape():
    frame = encode_chunk(3, "a\ud800b")
    assert b"\\ud800" in frame
    assert json.loads(whatwg_parse(frame)[0]["data"])["content"] == "a\ud800b"


# --- the chat endpoint refuses lone surrogates before anything is stored ----------------


@pytest.fixture
def chat_setup(transactional_db):
    alice = factories.make_user("alice")
    context = factories.make_context(alice, name="Work")
    conversation = factories.make_conversation(context)
    return {"token": factories.make_token(alice), "context": context, "conversation": conversation}


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("template", "field"),
    [
        (
            '{"context_id": "%(ctx)s", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
            "messages",
        ),
        (
            '{"context_id": "%(ctx)s", "messages": [{"role": "user", "content": "\\udfff"}]}',
            "messages",
        ),
        ('{"conversation_id": "%(conv)s", "message": "hi \\ud83d there"}', "message"),
    ],
)
def test_chat_refuses_lone_surrogates_naming_the_field(daphne, chat_setup, template, field):
    body = template % {"ctx": chat_setup["context"].id, "conv": chat_setup["conversation"].id}
    response = httpx.post(
        f"{daphne.url}/api/v1/conversations/stream",
        content=body.encode(),
        headers={
            "Authorization": f"Token {chat_setup['token']}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        },
        timeout=20,
    )
    assert response.status_code == 400, response.text
    data = response.json()
    assert data["code"] == "invalid" and field in data["errors"], data
    assert "surrogate" in json.dumps(data["errors"]).lower()
    assert not Message.objects.exists()


@pytest.mark.e2e
def test_a_valid_surrogate_pair_escape_is_accepted(daphne, chat_setup):
    """``\\ud83d\\ude00`` is one emoji written as JSON escapes: a normal message."""
    body = (
        '{"context_id": "%s", "messages": '
        '[{"role": "user", "content": "[[mock:echo]] \\ud83d\\ude00"}]}'
    )
    response = httpx.post(
        f"{daphne.url}/api/v1/conversations/stream",
        content=(body % chat_setup["context"].id).encode(),
        headers={
            "Authorization": f"Token {chat_setup['token']}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        },
        timeout=20,
    )
    assert response.status_code == 200, response.text
    assert response.json()["message"]["content"] == "[[mock:echo]] 😀"
