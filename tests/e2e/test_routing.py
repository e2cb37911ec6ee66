"""Routing and failover through a real daphne and two fake upstreams (docs/api.md#routing).

``AI_ROUTES=openai:gpt-4o-mini,anthropic:claude-sonnet-4-6``: the fake OpenAI server is
the primary, the fake Anthropic gateway the fallback. A retryable failure of the primary
before its first chunk moves the turn to the fallback with a ``failover`` event; after a
chunk it is the turn's error. Breakers are shared through the cache (Redis across
processes).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from django.core.cache import cache
from websockets.sync.client import connect

from ai.models import UsageRecord
from conversations.models import Message
from tests import factories
from tests.e2e.server import DaphneServer, free_port
from tests.e2e.test_metrics import sample
from tests.fakes.anthropic_server import AnthropicScript, FakeAnthropicServer
from tests.fakes.anthropic_server import error_body as anthropic_error
from tests.fakes.openai_server import FakeOpenAIServer, OpenAIScript, error_body, rate_limited
from tests.private_redis import PrivateRedis
from tests.sse_client import StreamResult, stream

pytestmark = pytest.mark.e2e

OPENAI = {"provider": "openai", "model": "gpt-4o-mini"}
ANTHROPIC = {"provider": "anthropic", "model": "claude-sonnet-4-6"}
ROUTES = "openai:gpt-4o-mini,anthropic:claude-sonnet-4-6"
REDIS_URL = "redis://127.0.0.1:6379/1"


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeOpenAIServer, FakeAnthropicServer]]:
    with FakeOpenAIServer() as openai_fake, FakeAnthropicServer() as anthropic_fake:
        yield openai_fake, anthropic_fake


@pytest.fixture
def upstreams(fakes):
    """The two fakes, with their queues and request logs emptied for this test, and no
    breaker state left by another test (shared through Redis when ``REDIS_URL`` is set)."""
    cache.clear()
    for fake in fakes:
        with fake.lock:
            fake.requests.clear()
            fake._queue.clear()
    return fakes


def env_for(openai_url: str, anthropic_url: str, **extra: str) -> dict[str, str]:
    return {
        "AI_ROUTES": ROUTES,
        "OPENAI_API_KEY": "sk-test-routing",
        "OPENAI_BASE_URL": openai_url,
        "ANTHROPIC_API_KEY": "sk-ant-test-routing",
        "ANTHROPIC_BASE_URL": anthropic_url,
        "AI_TIMEOUT_SECONDS": "2",
        "AI_MAX_RETRIES": "0",
        "FLOWS_EXTRACTION_ENABLED": "false",
        "CHAT_TITLES_ENABLED": "false",  # only reply calls reach the fakes here
        "AI_BREAKER_FAILURES": "1000",
        **extra,
    }


@pytest.fixture
def alice(transactional_db):
    user = factories.make_user("alice")
    return user, factories.make_token(user), factories.make_context(user, name="Work")


def turn(server, token, context, text: str = "Hello", **body) -> StreamResult:
    return stream(
        "POST",
        f"{server.url}/api/v1/conversations/stream",
        token=token,
        timeout=60,
        json_body={
            "context_id": str(context.id),
            "messages": [{"role": "user", "content": text}],
            **body,
        },
    )


def assert_served_by_anthropic(result: StreamResult, code: str) -> Message:
    """The turn failed over from the primary (``code``) and completed on the fallback."""
    names = result.names()
    assert names[-1] == "done", names
    failover = result.first("failover")
    assert failover.data == {"type": "failover", "from": OPENAI, "to": ANTHROPIC, "code": code}
    # metadata names the first route tried; the failover comes before any text.
    assert result.first("metadata").data["provider"] == "openai"
    assert names.index("failover") < names.index("chunk")
    assert result.text() == "Hello, world!"
    done = result.last().data
    assert (done["provider"], done["model"]) == ("anthropic", "claude-sonnet-4-6")
    # The fake gateway's usage: 21 input tokens (its message_start), 4 output tokens.
    assert done["usage"]["input_tokens"] == 21 and done["usage"]["output_tokens"] == 4
    assert done["usage"]["estimated"] is False
    message = Message.objects.get(pk=done["message_id"])
    assert (message.status, message.provider, message.model) == (
        "complete",
        "anthropic",
        "claude-sonnet-4-6",
    )
    assert (message.input_tokens, message.output_tokens) == (21, 4)
    line = UsageRecord.objects.get(message=message, purpose="reply")
    assert (line.provider, line.model, line.outcome) == (
        "anthropic",
        "claude-sonnet-4-6",
        "complete",
    )
    assert (line.input_tokens, line.output_tokens) == (21, 4)
    return message


# --- failover before the first chunk ------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "code"),
    [
        (rate_limited("1"), "ai_rate_limited"),
        (
            OpenAIScript(
                status=500, error_body=error_body("The server had an error", "server_error")
            ),
            "ai_unavailable",
        ),
        (OpenAIScript(first_byte_delay=6.0), "ai_timeout"),  # AI_TIMEOUT_SECONDS=2
        (OpenAIScript(drop_after=0), "ai_unavailable"),  # closed before its first chunk
        (OpenAIScript(tokens=[], finish_reason=None, send_done=False), "ai_error"),  # no text
    ],
    ids=["429", "500", "timeout", "closed-before-first-chunk", "ended-without-text"],
)
def test_a_primary_failing_before_its_first_chunk_fails_over(
    daphne_factory, upstreams, alice, script, code
):
    openai_fake, anthropic_fake = upstreams
    server = daphne_factory(**env_for(openai_fake.base_url, anthropic_fake.base_url))
    _, token, context = alice
    openai_fake.push(script)
    result = turn(server, token, context)
    assert_served_by_anthropic(result, code)
    assert len(openai_fake.requests) == 1  # no SDK retry before moving on
    assert len(anthropic_fake.requests) == 1
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    labels = (
        f'code="{code}",model="gpt-4o-mini",provider="openai",'
        'to_model="claude-sonnet-4-6",to_provider="anthropic"'
    )
    assert sample(metrics, "chat_failovers_total", labels) >= 1
    assert (
        sample(
            metrics,
            "chat_route_turns_total",
            'model="claude-sonnet-4-6",outcome="complete",provider="anthropic"',
        )
        >= 1
    )


def test_the_json_answer_names_the_route_that_served(daphne_factory, upstreams, alice):
    openai_fake, anthropic_fake = upstreams
    server = daphne_factory(**env_for(openai_fake.base_url, anthropic_fake.base_url))
    _, token, context = alice
    openai_fake.push(rate_limited("1"))
    answer = httpx.post(
        f"{server.url}/api/v1/conversations/stream",
        json={"context_id": str(context.id), "messages": [{"role": "user", "content": "Hi"}]},
        headers={"Authorization": f"Token {token}", "Accept": "application/json"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    message = answer.json()["message"]
    assert (message["status"], message["provider"], message["model"]) == (
        "complete",
        "anthropic",
        "claude-sonnet-4-6",
    )
    assert message["content"] == "Hello, world!"


def test_a_refused_connection_fails_over(daphne_factory, upstreams, alice):
    _, anthropic_fake = upstreams
    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    server = daphne_factory(**env_for(closed, anthropic_fake.base_url))
    _, token, context = alice
    assert_served_by_anthropic(turn(server, token, context), "ai_unavailable")


def test_a_primary_failing_after_its_third_chunk_is_an_error_without_switch(
    daphne_factory, upstreams, alice
):
    openai_fake, anthropic_fake = upstreams
    server = daphne_factory(**env_for(openai_fake.base_url, anthropic_fake.base_url))
    _, token, context = alice
    openai_fake.push(OpenAIScript(tokens=["One", " two", " three", " four"], drop_after=3))
    result = turn(server, token, context)
    names = result.names()
    assert "failover" not in names and names[-1] == "error", names
    assert result.last().data["code"] == "ai_unavailable"
    assert result.text() == "One two three"
    assert len(anthropic_fake.requests) == 0  # never a silent switch
    message = Message.objects.get(pk=result.first("metadata").data["message_id"])
    assert (message.status, message.content, message.provider) == (
        "failed",
        "One two three",
        "openai",
    )


def test_failover_over_the_websocket(daphne_factory, upstreams, alice):
    openai_fake, anthropic_fake = upstreams
    server = daphne_factory(**env_for(openai_fake.base_url, anthropic_fake.base_url))
    _, token, context = alice
    openai_fake.push(rate_limited("1"))
    frames = []
    with connect(
        server.url.replace("http://", "ws://") + "/ws/v1/chat/",
        origin=server.url,
        subprotocols=["token", token],
        proxy=None,
        open_timeout=10,
    ) as ws:
        body = {"context_id": str(context.id), "messages": [{"role": "user", "content": "Hi"}]}
        ws.send(json.dumps({"type": "chat", **body}))
        while not frames or frames[-1]["type"] not in ("done", "error"):
            frames.append(json.loads(ws.recv(timeout=30)))
    types = [frame["type"] for frame in frames]
    assert types[-1] == "done", types
    failover = next(frame for frame in frames if frame["type"] == "failover")
    assert (failover["from"], failover["to"], failover["code"]) == (
        OPENAI,
        ANTHROPIC,
        "ai_rate_limited",
    )
    assert types.index("failover") < types.index("chunk")
    assert "".join(f["content"] for f in frames if f["type"] == "chunk") == "Hello, world!"
    assert (frames[-1]["provider"], frames[-1]["model"]) == ("anthropic", "claude-sonnet-4-6")
    message = Message.objects.get(pk=frames[-1]["message_id"])
    assert message.provider == "anthropic"


# --- the peers: a usage-less OpenAI-compatible server and an Anthropic gateway ----------


def test_an_openai_compatible_server_without_usage_serves_as_fallback(
    daphne_factory, upstreams, alice
):
    openai_fake, anthropic_fake = upstreams
    server = daphne_factory(
        **env_for(
            openai_fake.base_url,
            anthropic_fake.base_url,
            AI_ROUTES="anthropic:claude-sonnet-4-6,openai:gpt-4o-mini",
        )
    )
    _, token, context = alice
    anthropic_fake.push(
        AnthropicScript(status=529, error_body=anthropic_error("overloaded_error", "Overloaded"))
    )
    openai_fake.push(OpenAIScript(tokens=["Fine", " thanks"], send_usage=False))
    result = turn(server, token, context)
    assert result.names()[-1] == "done", result.names()
    assert result.first("failover").data["from"] == ANTHROPIC
    assert result.first("failover").data["to"] == OPENAI
    assert result.first("metadata").data["provider"] == "anthropic"
    done = result.last().data
    assert (done["provider"], done["model"]) == ("openai", "gpt-4o-mini")
    assert done["usage"]["estimated"] is True and done["usage"]["output_tokens"] > 0
    message = Message.objects.get(pk=done["message_id"])
    assert (message.provider, message.usage_estimated, message.content) == (
        "openai",
        True,
        "Fine thanks",
    )
    line = UsageRecord.objects.get(message=message, purpose="reply")
    assert (line.provider, line.estimated) == ("openai", True)


def test_both_peers_serve_as_primary(daphne_factory, upstreams, alice):
    openai_fake, anthropic_fake = upstreams
    _, token, context = alice
    usage_less = daphne_factory(**env_for(openai_fake.base_url, anthropic_fake.base_url))
    openai_fake.push(OpenAIScript(send_usage=False))
    done = turn(usage_less, token, context).last().data
    assert (done["type"], done["provider"], done["usage"]["estimated"]) == (
        "done",
        "openai",
        True,
    )
    assert len(anthropic_fake.requests) == 0
    gateway_first = daphne_factory(
        **env_for(
            openai_fake.base_url,
            anthropic_fake.base_url,
            AI_ROUTES="anthropic:claude-sonnet-4-6,openai:gpt-4o-mini",
        )
    )
    result = turn(gateway_first, token, context)
    done = result.last().data
    assert (done["type"], done["provider"], done["model"]) == (
        "done",
        "anthropic",
        "claude-sonnet-4-6",
    )
    assert "failover" not in result.names()
    assert len(openai_fake.requests) == 1  # only the first server's turn


# --- the circuit breaker ------------------------------------------------------------------


def breaker_state(server, route: str = "openai:gpt-4o-mini") -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    provider, model = route.split(":")
    return sample(
        text, "chat_breaker_state", f'model="{model}",provider="{provider}",route="{route}"'
    )


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def test_the_breaker_opens_half_opens_and_closes(daphne_factory, upstreams, alice):
    openai_fake, anthropic_fake = upstreams
    server = daphne_factory(
        **env_for(
            openai_fake.base_url,
            anthropic_fake.base_url,
            AI_BREAKER_FAILURES="3",
            AI_BREAKER_COOLDOWN_SECONDS="8",
        )
    )
    _, token, context = alice
    failure = OpenAIScript(status=503, error_body=error_body("Unavailable", "server_error"))
    openai_fake.push(failure, failure, failure)
    for _ in range(3):
        assert_served_by_anthropic(turn(server, token, context), "ai_unavailable")
    assert len(openai_fake.requests) == 3
    assert breaker_state(server) == 2  # open

    # Open: the primary is skipped (not called), no failover event, the fallback serves.
    result = turn(server, token, context)
    assert "failover" not in result.names()
    assert result.last().data["provider"] == "anthropic"
    assert len(openai_fake.requests) == 3

    # After the cooldown one turn probes the primary; its success closes the breaker.
    wait_for(lambda: breaker_state(server) == 1)  # half-open
    result = turn(server, token, context)
    assert result.last().data["provider"] == "openai", result.names()
    assert len(openai_fake.requests) == 4
    assert breaker_state(server) == 0
    result = turn(server, token, context)
    assert result.last().data["provider"] == "openai"


def test_a_failed_probe_opens_the_breaker_again(daphne_factory, upstreams, alice):
    openai_fake, anthropic_fake = upstreams
    server = daphne_factory(
        **env_for(
            openai_fake.base_url,
            anthropic_fake.base_url,
            AI_BREAKER_FAILURES="1",
            AI_BREAKER_COOLDOWN_SECONDS="8",
        )
    )
    _, token, context = alice
    failure = OpenAIScript(status=500, error_body=error_body("Error", "server_error"))
    openai_fake.push(failure)
    assert_served_by_anthropic(turn(server, token, context), "ai_unavailable")
    assert breaker_state(server) == 2
    wait_for(lambda: breaker_state(server) == 1)
    openai_fake.push(failure)
    assert_served_by_anthropic(turn(server, token, context), "ai_unavailable")
    assert breaker_state(server) == 2 and len(openai_fake.requests) == 2
    assert turn(server, token, context).last().data["provider"] == "anthropic"
    assert len(openai_fake.requests) == 2


def test_a_second_process_sees_the_open_breaker_through_redis(upstreams, alice, transactional_db):
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    openai_fake, anthropic_fake = upstreams
    env = env_for(
        openai_fake.base_url,
        anthropic_fake.base_url,
        REDIS_URL=REDIS_URL,
        AI_BREAKER_FAILURES="2",
        AI_BREAKER_COOLDOWN_SECONDS="600",
    )
    first, second = DaphneServer(env).start(), DaphneServer(env).start()
    try:
        _, token, context = alice
        failure = OpenAIScript(status=502, error_body=error_body("Bad gateway", "server_error"))
        openai_fake.push(failure, failure)
        for _ in range(2):
            assert_served_by_anthropic(turn(first, token, context), "ai_unavailable")
        assert len(openai_fake.requests) == 2
        # The other process: the primary is skipped, its turn never calls it.
        assert breaker_state(second) == 2
        result = turn(second, token, context)
        assert result.last().data["provider"] == "anthropic" and "failover" not in result.names()
        assert len(openai_fake.requests) == 2
    finally:
        first.stop()
        second.stop()
        redis.Redis.from_url(REDIS_URL).flushdb()


# --- the usage of a failed attempt, a client's pick, the system route -------------------


def test_a_failed_routes_reported_usage_is_in_the_ledger_and_not_charged(
    daphne_factory, upstreams, alice
):
    openai_fake, anthropic_fake = upstreams
    server = daphne_factory(
        **env_for(
            openai_fake.base_url,
            anthropic_fake.base_url,
            AI_ROUTES="anthropic:claude-sonnet-4-6,openai:gpt-4o-mini",
        )
    )
    _, token, context = alice
    # message_start (21 input tokens) reached us, then the connection dropped: no text.
    anthropic_fake.push(AnthropicScript(drop_after=0))
    openai_fake.push(OpenAIScript(tokens=["Fine"], prompt_tokens=30, completion_tokens=2))
    result = turn(server, token, context)
    assert result.first("failover").data["code"] == "ai_unavailable"
    done = result.last().data
    assert (done["provider"], done["usage"]["input_tokens"]) == ("openai", 30)
    lines = {
        line.provider: line
        for line in UsageRecord.objects.filter(message_id=done["message_id"], purpose="reply")
    }
    assert set(lines) == {"anthropic", "openai"}
    failed = lines["anthropic"]
    assert (failed.outcome, failed.error_code, failed.input_tokens) == (
        "failed",
        "ai_unavailable",
        21,
    )
    assert failed.tokens_charged == 0
    assert lines["openai"].tokens_charged == 32
    quota = httpx.get(
        f"{server.url}/api/v1/quota/", headers={"Authorization": f"Token {token}"}, timeout=10
    ).json()
    assert quota["tokens_used"] == 32 and quota["requests_used"] == 1


def test_a_clients_model_goes_first_and_the_system_route_extracts(daphne_factory, upstreams, alice):
    openai_fake, anthropic_fake = upstreams
    server = daphne_factory(
        **env_for(
            openai_fake.base_url,
            anthropic_fake.base_url,
            FLOWS_EXTRACTION_ENABLED="true",
            AI_SYSTEM_ROUTE="anthropic:claude-haiku-4-5",
            AI_ALLOWED_MODELS="openai:gpt-4o-mini,anthropic:claude-sonnet-4-6",
        )
    )
    _, token, context = alice
    models = httpx.get(
        f"{server.url}/api/v1/models/", headers={"Authorization": f"Token {token}"}, timeout=10
    ).json()
    assert [m["id"] for m in models["results"]] == [
        "openai:gpt-4o-mini",
        "anthropic:claude-sonnet-4-6",
    ]
    result = turn(server, token, context, model="anthropic:claude-sonnet-4-6")
    assert result.names()[-1] == "done", result.names()
    assert result.first("metadata").data["provider"] == "anthropic"
    assert result.last().data["provider"] == "anthropic"
    assert openai_fake.requests == []  # the client's pick went first and served
    # The reply streamed on the pick; the extraction went to the system route.
    streamed, extraction = anthropic_fake.requests
    assert streamed.body["model"] == "claude-sonnet-4-6" and streamed.body["stream"] is True
    assert extraction.body["model"] == "claude-haiku-4-5" and not extraction.body.get("stream")
    line = UsageRecord.objects.get(
        message_id=result.last().data["message_id"], purpose="extraction"
    )
    assert (line.provider, line.model) == ("anthropic", "claude-haiku-4-5")

    refused = httpx.post(
        f"{server.url}/api/v1/conversations/stream",
        json={
            "context_id": str(context.id),
            "model": "anthropic:claude-opus-4",
            "messages": [{"role": "user", "content": "hi"}],
        },
        headers={"Authorization": f"Token {token}"},
        timeout=10,
    )
    assert refused.status_code == 400 and "model" in refused.json()["errors"]


def test_turns_share_one_redis_connection_for_the_breaker(upstreams, alice, transactional_db):
    """Every turn reads the breakers from the cache; Django's own ``RedisCache`` opened a
    new connection per request under ASGI (a cache instance per async context), ours keeps
    one pool per process (core/cache.py). On a redis-server of the test's own, so that
    only this daphne's connections are counted."""
    import redis

    openai_fake, anthropic_fake = upstreams
    with PrivateRedis() as private:
        client = redis.Redis.from_url(private.url)
        env = env_for(openai_fake.base_url, anthropic_fake.base_url, REDIS_URL=private.url)
        server = DaphneServer(env).start()
        try:
            _, token, context = alice
            openai_fake.push(OpenAIScript(tokens=["Warm"]))
            assert turn(server, token, context).last().event == "done"  # pools made
            before = client.info("stats")["total_connections_received"]
            for _ in range(5):
                openai_fake.push(OpenAIScript(tokens=["Fine"]))
                assert turn(server, token, context).last().data["provider"] == "openai"
            opened = client.info("stats")["total_connections_received"] - before
            assert opened <= 1, f"{opened} Redis connections opened for 5 turns"
        finally:
            server.stop()
