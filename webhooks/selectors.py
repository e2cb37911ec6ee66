"""Reads for webhooks, scoped to one user."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from core.errors import NotFound
from core.http import parse_uuid
from webhooks.models import Subscription


def subscription_list(*, user: AbstractBaseUser) -> QuerySet[Subscription]:
    """The user's subscriptions, newest first."""
    return Subscription.objects.filter(user=user).order_by("-created_at", "id")


def subscription_get(*, user: AbstractBaseUser, subscription_id: object) -> Subscription:
    """One of the user's subscriptions (another user's answers 404)."""
    pk = parse_uuid(subscription_id)
    subscription = pk and Subscription.objects.filter(user=user, pk=pk).first()
    if not subscription:
        raise NotFound("Webhook not found.")
    return subscription
