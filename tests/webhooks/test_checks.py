"""System checks of the webhook settings (webhooks/checks.py)."""

from __future__ import annotations

from webhooks.checks import webhook_settings_check


def test_defaults_pass():
    assert webhook_settings_check() == []


def test_a_timeout_as_long_as_the_lease_is_an_error(settings):
    settings.WEBHOOK_TIMEOUT_SECONDS = 30
    settings.WEBHOOK_LEASE_SECONDS = 30
    assert [e.id for e in webhook_settings_check()] == ["webhooks.E001"]


def test_non_positive_values_are_errors(settings):
    settings.WEBHOOK_POLL_SECONDS = 0
    settings.WEBHOOK_RETRY_SCHEDULE = [5.0, -1.0]
    assert [e.id for e in webhook_settings_check()] == ["webhooks.E002", "webhooks.E002"]
