"""Concurrent reservations never exceed the limit (real threads, real connections)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from ai.errors import QuotaExceeded
from ai.models import Quota, Reservation
from ai.quota.services import quota_get_or_create, quota_release
from tests import factories
from tests.ai.quota_turns import reserve as turn_reserve

THREADS = 50


def _race(fn, count: int) -> list[str]:
    """Run ``fn`` in ``count`` threads released together; each uses its own connection."""
    barrier = threading.Barrier(count)

    def run(_: int) -> str:
        try:
            barrier.wait(timeout=30)
            return fn()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_reservations_against_five_remaining_let_five_through() -> None:
    user = factories.make_user("racer")
    quota = quota_get_or_create(user=user)
    Quota.objects.filter(pk=quota.pk).update(requests_limit=10, requests_used=5)

    def reserve() -> str:
        try:
            turn_reserve(user, 100)
        except QuotaExceeded:
            return "refused"
        return "reserved"

    outcomes = _race(reserve, THREADS)
    assert outcomes.count("reserved") == 5
    assert outcomes.count("refused") == THREADS - 5
    quota.refresh_from_db()
    assert (quota.requests_used, quota.requests_reserved, quota.tokens_reserved) == (5, 5, 500)
    assert Reservation.objects.filter(user=user, status="held").count() == 5


@pytest.mark.django_db(transaction=True)
def test_concurrent_first_use_creates_one_quota_and_respects_tokens() -> None:
    user = factories.make_user("tokenracer")
    from django.test import override_settings

    with override_settings(QUOTA_TOKENS_LIMIT=1000):

        def reserve() -> str:
            try:
                turn_reserve(user, 300)
            except QuotaExceeded:
                return "refused"
            return "reserved"

        outcomes = _race(reserve, 20)
    assert outcomes.count("reserved") == 3
    assert Quota.objects.filter(user=user).count() == 1
    assert Quota.objects.get(user=user).tokens_reserved == 900


@pytest.mark.django_db(transaction=True)
def test_concurrent_release_of_one_reservation_counts_once() -> None:
    user = factories.make_user("releaser")
    reservation = turn_reserve(user, 100)
    other = turn_reserve(user, 100)

    outcomes = _race(lambda: str(quota_release(reservation_id=reservation.pk)), 20)
    assert outcomes.count("True") == 1
    quota = Quota.objects.get(user=user)
    assert (quota.requests_reserved, quota.tokens_reserved) == (1, 100)
    assert Reservation.objects.get(pk=other.pk).status == "held"
