"""Reads for contexts, conversations and messages, always scoped to one user."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from conversations.models import Context, Conversation, Message
from core.errors import NotFound
from core.http import parse_uuid


def context_list(*, user: AbstractBaseUser) -> QuerySet[Context]:
    return Context.objects.filter(user=user).order_by("name", "id")


def context_get(*, user: AbstractBaseUser, context_id: object) -> Context:
    """The caller's context, or :class:`NotFound` (also for another user's id)."""
    pk = parse_uuid(context_id)
    context = pk and Context.objects.filter(user=user, pk=pk).first()
    if not context:
        raise NotFound("Context not found.")
    return context


def conversation_list(
    *, user: AbstractBaseUser, context_id: uuid.UUID | None = None
) -> QuerySet[Conversation]:
    qs = Conversation.objects.filter(user=user)
    if context_id is not None:
        qs = qs.filter(context_id=context_id)
    return qs.order_by("-updated_at", "id")


def conversation_get(*, user: AbstractBaseUser, conversation_id: object) -> Conversation:
    pk = parse_uuid(conversation_id)
    conversation = pk and Conversation.objects.filter(user=user, pk=pk).first()
    if not conversation:
        raise NotFound("Conversation not found.")
    return conversation


def message_list(
    *, conversation: Conversation, include_superseded: bool = False
) -> QuerySet[Message]:
    """Messages oldest first; superseded ones only with ``include_superseded``."""
    qs = conversation.messages.all()
    if not include_superseded:
        qs = qs.filter(superseded=False)
    return qs.order_by("created_at", "id")


def message_get(*, user: AbstractBaseUser, message_id: object) -> Message:
    pk = parse_uuid(message_id)
    message = pk and Message.objects.filter(user=user, pk=pk).first()
    if not message:
        raise NotFound("Message not found.")
    return message


def history_for_model(*, conversation: Conversation, limit: int) -> list[Message]:
    """The last ``limit`` finished messages with text, oldest first (what the model sees);
    superseded messages never (docs/api.md#regenerate-and-edit)."""
    qs = (
        conversation.messages.filter(superseded=False)
        .exclude(content="")
        .exclude(status=Message.Status.STREAMING)
        .order_by("-created_at", "-id")[:limit]
    )
    return list(reversed(list(qs)))
