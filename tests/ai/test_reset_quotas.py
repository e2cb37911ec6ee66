"""manage.py reset_quotas: every option, unknown users, dry runs."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from ai.models import Quota, Reservation
from ai.quota.services import quota_get_or_create
from tests import factories
from tests.ai.quota_turns import reserve

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command("reset_quotas", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def quotas(user, other_user) -> dict[str, Quota]:
    """alice: used, period still running; mallory: used, period passed."""
    alice = quota_get_or_create(user=user)
    mallory = quota_get_or_create(user=other_user)
    Quota.objects.filter(pk=alice.pk).update(requests_used=4, tokens_used=400)
    Quota.objects.filter(pk=mallory.pk).update(
        requests_used=2, tokens_used=20, resets_at=timezone.now() - timedelta(minutes=5)
    )
    return {"alice": alice, "mallory": mallory}


def used(username: str) -> tuple[int, int]:
    quota = Quota.objects.get(user__username=username)
    return quota.requests_used, quota.tokens_used


def test_no_selection_is_an_error(quotas) -> None:
    with pytest.raises(CommandError, match="--user USERNAME, --all or --expired"):
        run()
    with pytest.raises(CommandError, match=r"--user USERNAME"):
        run("--dry-run")
    assert used("alice") == (4, 400)


def test_user_and_all_together_is_an_error(quotas) -> None:
    with pytest.raises(CommandError, match="not both"):
        run("--user", "alice", "--all")


def test_unknown_user_is_an_error_and_resets_nothing(quotas) -> None:
    with pytest.raises(CommandError, match=r"Unknown user.*nobody"):
        run("--user", "alice", "--user", "nobody")
    assert used("alice") == (4, 400)


def test_one_user(quotas) -> None:
    out = run("--user", "alice")
    assert "reset alice: requests used 4 -> 0, tokens used 400 -> 0" in out
    assert "mallory" not in out
    assert "Reset 1 quota(s)." in out
    assert used("alice") == (0, 0)
    assert used("mallory") == (2, 20)


def test_repeated_user(quotas) -> None:
    out = run("--user", "alice", "--user", "mallory")
    assert "reset alice" in out and "reset mallory" in out
    assert "Reset 2 quota(s)." in out
    assert used("alice") == used("mallory") == (0, 0)


def test_user_without_a_quota_is_skipped(quotas) -> None:
    factories.make_user("newbie")
    out = run("--user", "newbie")
    assert "skipped newbie: no quota yet" in out
    assert "Reset 0 quota(s)." in out
    assert not Quota.objects.filter(user__username="newbie").exists()


def test_all(quotas) -> None:
    out = run("--all")
    assert "reset alice" in out and "reset mallory" in out
    assert used("alice") == used("mallory") == (0, 0)


def test_expired_only(quotas) -> None:
    out = run("--expired")
    assert "reset mallory" in out
    assert "alice" not in out
    assert "Reset 1 quota(s)." in out
    assert used("mallory") == (0, 0)
    assert used("alice") == (4, 400)
    assert Quota.objects.get(user__username="mallory").resets_at > timezone.now()
    # Safe to run again (from cron): nothing left to do.
    assert "Reset 0 quota(s)." in run("--expired")


def test_expired_for_given_users(quotas) -> None:
    out = run("--expired", "--user", "alice")
    assert "Reset 0 quota(s)." in out
    assert used("alice") == (4, 400)
    assert used("mallory") == (2, 20)


def test_dry_run_changes_nothing(quotas) -> None:
    before = list(Quota.objects.order_by("pk").values())
    out = run("--all", "--dry-run")
    assert "would reset alice: requests used 4 -> 0" in out
    assert "would reset mallory" in out
    assert "Dry run: would reset 2 quota(s)." in out
    assert list(Quota.objects.order_by("pk").values()) == before
    out = run("--expired", "--dry-run")
    assert "would reset mallory" in out and "alice" not in out
    assert list(Quota.objects.order_by("pk").values()) == before


def test_never_touches_replies_in_flight(quotas, user) -> None:
    reservation = reserve(user, 50)
    out = run("--all")
    assert "1 in flight kept" in out
    quota = Quota.objects.get(user=user)
    assert (quota.requests_used, quota.requests_reserved, quota.tokens_reserved) == (0, 1, 50)
    assert Reservation.objects.get(pk=reservation.pk).status == "held"
