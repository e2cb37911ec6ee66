"""A real daphne streams a chat turn to clients that do not ask for JSON.

curl's default ``Accept: */*``, no ``Accept`` at all, and the very curl line
``manage.py demo_setup`` prints (and README shows) get ``text/event-stream`` events ending
in ``done``; only a client that prefers JSON gets one JSON document.
"""

from __future__ import annotations

import io
import json
import shlex
import shutil
import subprocess

import httpx
import pytest
from django.core.management import call_command

from tests import factories
from tests.sse_client import raw_post

EVENT_ORDER_TAIL = ["typing", "flows_extracted", "title", "done"]


@pytest.fixture
def alice(transactional_db):
    user = factories.make_user("alice")
    return factories.make_token(user), factories.make_context(user, name="Work")


def chat_url(server) -> str:
    return f"{server.url}/api/v1/conversations/stream"


def body_for(context, text: str = "I need to call the client") -> dict:
    return {"context_id": str(context.id), "messages": [{"role": "user", "content": text}]}


def sse_event_names(text: str) -> list[str]:
    return [line[len("event: ") :] for line in text.splitlines() if line.startswith("event: ")]


@pytest.mark.parametrize("accept", [None, "*/*", "text/*"], ids=["none", "any", "text"])
def test_streams_unless_json_is_preferred(daphne, alice, accept):
    """A raw socket request, so that the ``Accept`` sent is exactly this one (or none:
    httpx always adds ``*/*`` and httpx-sse forces ``text/event-stream``)."""
    token, context = alice
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    if accept is not None:
        headers["Accept"] = accept
    read = raw_post(chat_url(daphne), json.dumps(body_for(context)).encode(), headers)
    head = read.head.decode().lower()
    assert " 200 " in head.splitlines()[0]
    assert "content-type: text/event-stream" in head
    names = sse_event_names(read.body.decode())
    assert names[0] == "metadata" and names[-4:] == EVENT_ORDER_TAIL


def test_preferring_json_gets_one_document(daphne, alice):
    token, context = alice
    response = httpx.post(
        chat_url(daphne),
        json=body_for(context),
        headers={"Authorization": f"Token {token}", "Accept": "application/json, */*;q=0.5"},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["message"]["status"] == "complete"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_printed_demo_curl_line_streams(daphne, transactional_db):
    out = io.StringIO()
    call_command("demo_setup", url=f"{daphne.url}/", stdout=out)
    lines = out.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("curl "))
    end = next(i for i in range(start, len(lines)) if not lines[i].rstrip().endswith("\\"))
    command = " ".join(line.rstrip().rstrip("\\") for line in lines[start : end + 1])
    argv = shlex.split(command)
    assert not any(arg.lower().startswith("accept:") for arg in argv)  # the plain line
    completed = subprocess.run(
        [*argv, "--silent", "--show-error", "--include", "--max-time", "30"],
        capture_output=True,
        timeout=40,
        check=True,
    )
    head, _, body = completed.stdout.decode().partition("\r\n\r\n")
    assert "content-type: text/event-stream" in head.lower()
    names = sse_event_names(body)
    assert names[0] == "metadata" and names[-4:] == EVENT_ORDER_TAIL
    flows = json.loads(
        next(
            line[len("data: ") :]
            for line in body.splitlines()
            if line.startswith("data: ") and '"flows_extracted"' in line
        )
    )["flows"]
    assert sorted(f["title"] for f in flows) == ["Book a flight", "Call the client"]
