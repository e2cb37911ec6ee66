"""Test data builders: plain functions with sensible defaults, saved to the real database."""

from __future__ import annotations

import itertools
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from rest_framework.authtoken.models import Token

from conversations.models import Context, Conversation, Message
from flows.models import Flow

_seq = itertools.count(1)


def make_user(username: str | None = None, **fields: Any) -> AbstractBaseUser:
    """A user with password ``pw-<username>``."""
    username = username or f"user{next(_seq)}"
    user = get_user_model().objects.create_user(
        username=username, password=f"pw-{username}", **fields
    )
    return user


def make_token(user: AbstractBaseUser) -> str:
    """The DRF token key of ``user`` (created when missing)."""
    return Token.objects.get_or_create(user=user)[0].key


def make_context(user: AbstractBaseUser, name: str | None = None, **fields: Any) -> Context:
    return Context.objects.create(user=user, name=name or f"Context {next(_seq)}", **fields)


def make_conversation(context: Context, **fields: Any) -> Conversation:
    return Conversation.objects.create(user=context.user, context=context, **fields)


def make_message(
    conversation: Conversation, role: str = "user", content: str = "Hello", **fields: Any
) -> Message:
    return Message.objects.create(
        user=conversation.user, conversation=conversation, role=role, content=content, **fields
    )


def make_flow(context: Context, title: str | None = None, **fields: Any) -> Flow:
    title = title or f"Task {next(_seq)}"
    return Flow.objects.create(
        user=context.user, context=context, title=title, title_key=title.casefold(), **fields
    )
