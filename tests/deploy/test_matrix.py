"""The deployment matrix: every supported configuration, booted as an operator boots it.

Each row starts real processes from a from-scratch environment exactly as
``docs/operations.md`` and the README say (``migrate``, ``collectstatic``, ``check
--deploy``, ``daphne``; ``DJANGO_DEBUG`` off, ``chatproject.settings``), then serves a full
chat turn with the credentials of that configuration: REST, SSE, and a WebSocket turn.

The dimensions and their values (every value is in at least one row; rows combine them to
keep the number of processes, and so the run time, small):

- provider: ``mock``, ``openai`` (fake server, real wire format), ``anthropic`` (same);
- authentication: DRF token only; OIDC bearer (the fake OIDC provider's JWKS); OIDC
  bearer and browser login (the authorization-code flow through mozilla-django-oidc);
- storage: SQLite (in-memory channel layer); PostgreSQL + Redis.

A new setting in the settings table of ``docs/api.md`` that changes how the service starts
gets a row (or a value in a row) here.

Nothing here uses the test process's Django database: each row has its own SQLite file or
its own PostgreSQL database ``matrix_<hex>``, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from websockets.sync.client import connect

from tests.deploy.runner import (
    REDIS_URL,
    Deployment,
    FakeOIDCLogin,
    postgres_database,
    production_environment,
    stream_turn,
)
from tests.fakes.anthropic_server import AnthropicScript, FakeAnthropicServer
from tests.fakes.oidc_server import FakeOIDCProvider
from tests.fakes.openai_server import FakeOpenAIServer, OpenAIScript
from tests.sse_client import StreamResult

pytestmark = pytest.mark.e2e

PROVIDERS = ("mock", "openai", "anthropic")
AUTHS = ("token", "bearer", "bearer+browser")
STORAGES = ("sqlite", "postgres+redis")

#: What a fake upstream streams for every reply (so the stored text can be compared).
UPSTREAM_TOKENS = ["Deployed", " and", " streaming", "."]
STREAM_PATH = "/api/v1/conversations/stream"


@dataclass(frozen=True)
class Row:
    """One configuration of the matrix."""

    provider: str
    auth: str
    storage: str
    #: ``AI_MODEL`` to set (empty: the provider's default, which ``model`` must then be).
    ai_model: str
    #: The model the turn's ``metadata`` must name.
    model: str

    @property
    def id(self) -> str:
        return f"{self.provider}-{self.auth}-{self.storage}"


ROWS = (
    Row("mock", "token", "sqlite", ai_model="", model="mock-1"),
    Row("openai", "bearer", "sqlite", ai_model="", model="gpt-4o-mini"),
    Row(
        "anthropic",
        "bearer+browser",
        "postgres+redis",
        ai_model="claude-matrix-1",
        model="claude-matrix-1",
    ),
    Row("mock", "token", "postgres+redis", ai_model="", model="mock-1"),
)


def test_every_value_of_every_dimension_has_a_row():
    """The matrix keeps covering each supported value when rows are edited."""
    assert {row.provider for row in ROWS} == set(PROVIDERS)
    assert {row.auth for row in ROWS} == set(AUTHS)
    assert {row.storage for row in ROWS} == set(STORAGES)
    assert len({row.id for row in ROWS}) == len(ROWS)


# --- checks of one turn -------------------------------------------------------------------------
def without_title(names: list[str], row: Row) -> list[str]:
    """The event names without a first turn's ``title``, which comes between
    ``flows_extracted`` and ``done`` when the title call named the conversation: always
    with the mock; the fake upstreams answer the title call with no title."""
    if "title" in names:
        assert names[-2] == "title", names
    if row.provider == "mock":
        assert "title" in names, names
    return [name for name in names if name != "title"]


def check_sse_turn(result: StreamResult, row: Row) -> dict[str, Any]:
    """A successful turn's full event sequence; returns the ``metadata`` event's data."""
    assert result.status_code == 200, (result.status_code, result.body)
    assert result.headers["content-type"].startswith("text/event-stream"), result.body
    names = without_title(result.names(), row)
    events = [e for e in result.events if e.event != "title"]
    assert names[:2] == ["metadata", "typing"], names
    assert names[-3:] == ["typing", "flows_extracted", "done"], names
    assert len(names) > 5 and set(names[2:-3]) == {"chunk"}, names
    assert events[1].data["status"] == "start"
    assert events[-3].data["status"] == "stop"
    meta = result.first("metadata").data
    assert (meta["provider"], meta["model"]) == (row.provider, row.model)
    done = result.last().data
    assert done["finish_reason"] == "stop" and done["message_id"] == meta["message_id"]
    if row.provider != "mock":
        assert result.text() == "".join(UPSTREAM_TOKENS)
    return meta


def check_ws_turn(events: list[dict[str, Any]], row: Row) -> dict[str, Any]:
    """The same sequence over the WebSocket; returns the ``metadata`` frame."""
    names = without_title([e["type"] for e in events if "id" in e], row)
    stream = [e for e in events if "id" in e and e["type"] != "title"]
    assert names[:2] == ["metadata", "typing"], events
    assert names[-3:] == ["typing", "flows_extracted", "done"], events
    assert len(names) > 5 and set(names[2:-3]) == {"chunk"}, events
    assert stream[1]["status"] == "start" and stream[-3]["status"] == "stop"
    meta = stream[0]
    assert (meta["provider"], meta["model"]) == (row.provider, row.model)
    assert stream[-1]["finish_reason"] == "stop"
    return meta


def check_stored(client: httpx.Client, meta: dict[str, Any], text: str, row: Row) -> None:
    """The assistant reply of the turn is stored ``complete`` with the streamed text."""
    response = client.get(f"/api/v1/conversations/{meta['conversation_id']}/messages/")
    assert response.status_code == 200, response.text
    messages = {m["id"]: m for m in response.json()["results"]}
    reply = messages[meta["message_id"]]
    assert reply["role"] == "assistant" and reply["status"] == "complete", reply
    assert reply["content"] == text and text
    assert reply["provider"] == row.provider
    user_message = messages[meta["user_message_id"]]
    assert user_message["role"] == "user" and user_message["status"] == "complete"


def check_static(deployment: Deployment, static_root: Path) -> None:
    """``collectstatic`` wrote to ``DJANGO_STATIC_ROOT`` and daphne serves those files."""
    manifest = json.loads((static_root / "staticfiles.json").read_text())
    hashed = sorted(name for name in manifest["paths"].values() if name.endswith(".js"))
    assert hashed, manifest
    response = httpx.get(f"{deployment.url}/static/{hashed[0]}")
    assert response.status_code == 200, (hashed[0], response.status_code)
    assert "javascript" in response.headers["content-type"]
    assert "immutable" in response.headers.get("cache-control", "")


def ws_turn(deployment: Deployment, subprotocols: list[str], context_id: str) -> list[dict]:
    """One chat turn over the WebSocket, opened as a browser on the server's origin would."""
    frames: list[dict[str, Any]] = []
    with connect(
        deployment.ws_url,
        origin=deployment.url,
        subprotocols=subprotocols,
        proxy=None,
        open_timeout=10,
    ) as ws:
        assert ws.subprotocol == subprotocols[0]  # the scheme, never the credentials
        chat = {
            "type": "chat",
            "context_id": context_id,
            "messages": [{"role": "user", "content": "And over the socket?"}],
        }
        ws.send(json.dumps(chat))
        while True:
            frame = json.loads(ws.recv(timeout=20))
            frames.append(frame)
            assert frame["type"] != "error", frames
            if frame["type"] == "done":
                return frames


def browser_login(client: httpx.Client, deployment: Deployment, login: FakeOIDCLogin) -> None:
    """The OIDC authorization-code flow as a browser follows it; ``client`` keeps the session."""
    start = client.get("/oidc/authenticate/")
    assert start.status_code == 302, start.text
    location = start.headers["location"]
    assert location.startswith(f"{login.url}/authorize?"), location
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert query["client_id"] == login.client_id and query["response_type"] == "code"
    assert query["redirect_uri"] == f"{deployment.url}/oidc/callback/"
    assert query["state"] and query["nonce"]

    at_provider = client.get(location)  # the provider "logs the user in" at once
    assert at_provider.status_code == 302
    callback = client.get(at_provider.headers["location"])
    assert callback.status_code == 302, callback.text
    assert [r["client_secret"] for r in login.token_requests] == [login.client_secret]
    assert client.get("/api/v1/quota/").status_code == 200  # logged in by the session


# --- the rows -----------------------------------------------------------------------------------
@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.id)
def test_configuration_starts_and_serves_a_full_turn(row: Row, tmp_path: Path):
    with contextlib.ExitStack() as stack:
        static_root = tmp_path / "static"
        settings: dict[str, str] = {"DJANGO_STATIC_ROOT": str(static_root)}
        if row.storage == "sqlite":
            settings["DATABASE_URL"] = f"sqlite:///{tmp_path / 'db.sqlite3'}"
        else:
            settings["DATABASE_URL"] = stack.enter_context(postgres_database())
            settings["REDIS_URL"] = REDIS_URL

        settings["AI_PROVIDER"] = row.provider
        if row.ai_model:
            settings["AI_MODEL"] = row.ai_model
        upstream: FakeOpenAIServer | FakeAnthropicServer | None = None
        if row.provider == "mock":
            settings["MOCK_TOKEN_DELAY_MS"] = "1"
        elif row.provider == "openai":
            upstream = FakeOpenAIServer()
            upstream.default = OpenAIScript(tokens=UPSTREAM_TOKENS)
            stack.enter_context(upstream)
            settings["OPENAI_API_KEY"] = "sk-matrix-" + secrets.token_hex(8)
            settings["OPENAI_BASE_URL"] = upstream.base_url
        else:
            upstream = FakeAnthropicServer()
            upstream.default = AnthropicScript(tokens=UPSTREAM_TOKENS)
            stack.enter_context(upstream)
            settings["ANTHROPIC_API_KEY"] = "sk-ant-matrix-" + secrets.token_hex(8)
            settings["ANTHROPIC_BASE_URL"] = upstream.base_url

        oidc: FakeOIDCProvider | None = None
        login: FakeOIDCLogin | None = None
        subject = f"matrix-{uuid.uuid4().hex[:8]}"
        if row.auth != "token":
            oidc = stack.enter_context(FakeOIDCProvider())
            settings["OIDC_OP_ISSUER"] = oidc.issuer
            settings["OIDC_OP_JWKS_ENDPOINT"] = oidc.jwks_url
            settings["OIDC_API_AUDIENCE"] = oidc.audience
        if row.auth == "bearer+browser":
            assert oidc is not None
            login = FakeOIDCLogin(oidc, sub=subject, client_secret=secrets.token_urlsafe(16))
            stack.enter_context(login)
            settings.update(login.environment())

        deployment = Deployment(production_environment(**settings), tmp_path / "deploy")
        stack.enter_context(deployment)
        stack.enter_context(deployment.explained())  # failures below show daphne's output

        # The credentials of this configuration.
        if oidc is None:
            key = deployment.manage("issue_token", "alice", "--create").strip().splitlines()[-1]
            authorization, subprotocols = f"Token {key}", ["token", key]
        else:
            jwt = oidc.issue(sub=subject)
            authorization, subprotocols = f"Bearer {jwt}", ["bearer", jwt]

        assert httpx.get(f"{deployment.url}/api/v1/quota/").status_code == 401
        assert httpx.get(f"{deployment.url}/accounts/login/").status_code == 200
        check_static(deployment, static_root)
        missing = httpx.get(f"{deployment.url}/no-such-page/")
        assert missing.status_code == 404 and "URLconf" not in missing.text  # DEBUG is off

        with httpx.Client(
            base_url=deployment.url, headers={"Authorization": authorization}, timeout=30
        ) as client:
            created = client.post("/api/v1/contexts/", json={"name": "Matrix"})
            assert created.status_code == 201, created.text
            context_id = created.json()["id"]
            body = {
                "context_id": context_id,
                "messages": [{"role": "user", "content": "I need to book a flight"}],
            }
            result = stream_turn(client, STREAM_PATH, body)
            meta = check_sse_turn(result, row)
            check_stored(client, meta, result.text(), row)

            frames = ws_turn(deployment, subprotocols, context_id)
            ws_meta = check_ws_turn(frames, row)
            ws_text = "".join(f["content"] for f in frames if f["type"] == "chunk")
            check_stored(client, ws_meta, ws_text, row)

        if login is not None:
            with httpx.Client(base_url=deployment.url, timeout=30) as browser:
                browser_login(browser, deployment, login)
                page = browser.get("/")
                assert page.status_code == 200, page.text
                csrf = browser.cookies.get("csrftoken")
                assert csrf, "no CSRF cookie after the browser login"
                result = stream_turn(browser, STREAM_PATH, body, headers={"X-CSRFToken": csrf})
                meta = check_sse_turn(result, row)
                check_stored(browser, meta, result.text(), row)

        if upstream is not None:
            # Every reply went to the fake upstream, with the configured key and model.
            streamed = [r for r in upstream.requests if (r.body or {}).get("stream")]
            assert len(streamed) == 2 + (login is not None), upstream.requests
            api_key = settings[
                "OPENAI_API_KEY" if row.provider == "openai" else "ANTHROPIC_API_KEY"
            ]
            sent_keys = {r.header("x-api-key") or r.header("authorization") for r in streamed}
            assert sent_keys <= {api_key, f"Bearer {api_key}"}, sent_keys
            assert {r.body["model"] for r in streamed} == {row.model}

        timings = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in deployment.timings)
        print(f"{row.id}: {timings}")
