"""A server killed mid-reply: after restart the reply is ``interrupted``, nothing held."""

from __future__ import annotations

import time

import httpx
import pytest

from ai.models import Quota, Reservation
from conversations.models import Message
from tests import factories
from tests.e2e.server import DaphneServer
from tests.sse_client import stream

pytestmark = pytest.mark.e2e

FAST_RECOVERY = {
    "CHAT_STALE_SECONDS": "2",
    "CHAT_CHECKPOINT_SECONDS": "0.2",
    "MOCK_TOKEN_DELAY_MS": "1",
}


@pytest.fixture(scope="module", autouse=True)
def _no_fast_sweeper_afterwards(daphne_factory):
    """This module's servers sweep replies quiet for 2 s (CHAT_STALE_SECONDS): once its
    tests are done they must not go on interrupting other tests' replies on the shared
    test database (a reply waiting out a failover is quiet longer than that)."""
    yield
    daphne_factory.stop_where(lambda env: "CHAT_STALE_SECONDS" in env)


def wait_for(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_sigkill_mid_reply_then_restart(transactional_db, django_db_blocker):
    user = factories.make_user("alice")
    token = factories.make_token(user)
    context = factories.make_context(user, "Work")
    first = DaphneServer(FAST_RECOVERY).start()
    second = None
    try:
        partial = stream(
            "POST",
            f"{first.url}/api/v1/conversations/stream",
            token=token,
            stop_after=12,
            json_body={
                "context_id": str(context.id),
                "messages": [{"role": "user", "content": "[[mock:slow:50]] [[mock:long:200]] go"}],
            },
        )
        message_id = partial.first("metadata").data["message_id"]
        user_message_id = partial.first("metadata").data["user_message_id"]
        time.sleep(0.5)  # let a checkpoint save some text
        first.kill()
        assert Message.objects.get(pk=message_id).status == "streaming"

        second = DaphneServer(FAST_RECOVERY).start()
        httpx.get(f"{second.url}/healthz")  # the first request starts the sweeper
        assert wait_for(lambda: Message.objects.get(pk=message_id).status == "interrupted")

        message = Message.objects.get(pk=message_id)
        assert message.content and partial.text().startswith(message.content[:10])
        assert Message.objects.get(pk=user_message_id).content.endswith("go")
        assert not Reservation.objects.filter(status="held").exists()
        quota = Quota.objects.get(user=user)
        assert quota.requests_reserved == 0 and quota.tokens_reserved == 0

        resumed = stream("GET", f"{second.url}/api/v1/messages/{message_id}/stream", token=token)
        assert resumed.text() == message.content
        assert resumed.names()[-2:] == ["typing", "error"]
        assert resumed.last().data["retryable"] is True
    finally:
        first.stop()
        if second:
            second.stop()


def test_sweeper_leaves_live_generations_of_other_processes_alone(daphne_factory, transactional_db):
    user = factories.make_user("alice")
    token = factories.make_token(user)
    context = factories.make_context(user, "Work")
    runner = daphne_factory(**FAST_RECOVERY)
    other = daphne_factory(**FAST_RECOVERY, CHAT_KEEPALIVE_SECONDS="14")
    httpx.get(f"{other.url}/healthz")
    result = stream(
        "POST",
        f"{runner.url}/api/v1/conversations/stream",
        token=token,
        json_body={
            "context_id": str(context.id),
            "messages": [{"role": "user", "content": "[[mock:slow:60]] [[mock:long:80]] go"}],
        },
    )  # about 5 s: longer than CHAT_STALE_SECONDS, kept alive by heartbeats
    assert result.last().event == "done"
    message = Message.objects.get(pk=result.first("metadata").data["message_id"])
    assert message.status == "complete" and message.content == result.text()
