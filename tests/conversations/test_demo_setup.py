"""``manage.py demo_setup``'s options for scripts (the benchmarks): other users, several
contexts, quota limits and a JSON answer; without them it stays the demo of ``make run``."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from rest_framework.authtoken.models import Token

from ai.models import Quota
from conversations.models import Context

pytestmark = pytest.mark.django_db


def demo_setup(*args: str) -> dict:
    out = StringIO()
    call_command("demo_setup", *args, "--json", stdout=out)
    return json.loads(out.getvalue())


def test_json_answer_names_the_user_token_and_contexts() -> None:
    made = demo_setup("--username", "bench", "--context", "Soak 0", "--context", "Soak 1")
    assert made["username"] == "bench"
    assert Token.objects.get(key=made["token"]).user_id == made["user_id"]
    contexts = Context.objects.filter(user_id=made["user_id"]).order_by("name")
    assert [str(c.id) for c in contexts] == made["context_ids"]
    assert [c.name for c in contexts] == ["Soak 0", "Soak 1"]
    # Once only: a second run answers with the same rows.
    assert demo_setup("--username", "bench", "--context", "Soak 0", "--context", "Soak 1") == made


def test_quota_limits_are_set_and_left_alone_when_not_given(settings) -> None:
    made = demo_setup("--username", "bench", "--requests-limit", "6", "--tokens-limit", "10")
    quota = Quota.objects.get(user_id=made["user_id"])
    assert (quota.requests_limit, quota.tokens_limit) == (6, 10)
    demo_setup("--username", "bench", "--tokens-limit", str(10**15))
    quota.refresh_from_db()
    assert (quota.requests_limit, quota.tokens_limit) == (6, 10**15)
    # Without limits no quota row is written (the first turn makes it from the settings).
    other = demo_setup("--username", "other")
    assert not Quota.objects.filter(user_id=other["user_id"]).exists()


def test_default_is_the_demo_of_make_run() -> None:
    out = StringIO()
    call_command("demo_setup", "--url", "http://127.0.0.1:9000/", stdout=out)
    text = out.getvalue()
    context = Context.objects.get(user__username="demo")
    assert context.name == "Work" and context.description == "Demo context"
    assert "Login:      demo / demo-chat-2026" in text
    assert f"Context id: {context.id}" in text
    assert "curl -N http://127.0.0.1:9000/api/v1/conversations/stream" in text
