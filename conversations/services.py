"""Writes for contexts, conversations and replies (the chat turn's own two transactions are
in :mod:`conversations.turn_start` and :mod:`conversations.turn_finish`)."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from ai.quota.services import quota_lock
from conversations.models import Context, Conversation, Message
from core import sql
from core.errors import Conflict, InvalidRequest

_NAME_TAKEN = "You already have a context with this name."


def context_create(
    *, user: AbstractBaseUser, name: str, description: str = "", instructions: str = ""
) -> Context:
    """Create a context; a duplicate name answers 400 naming ``name``."""
    try:
        with transaction.atomic():
            return Context.objects.create(
                user=user, name=name, description=description, instructions=instructions
            )
    except IntegrityError as exc:
        raise InvalidRequest({"name": [_NAME_TAKEN]}) from exc


def context_update(*, context: Context, data: dict[str, Any]) -> Context:
    """Update name, description or instructions."""
    for field in ("name", "description", "instructions"):
        if field in data:
            setattr(context, field, data[field])
    try:
        with transaction.atomic():
            context.save()
    except IntegrityError as exc:
        raise InvalidRequest({"name": [_NAME_TAKEN]}) from exc
    return context


def _delete_unless_streaming(
    *, owner: AbstractBaseUser, messages: QuerySet[Message], obj: Any
) -> None:
    """Delete ``obj`` unless one of ``messages`` (its messages) is a reply streaming.

    The check and the delete are one transaction, ordered with a turn's start by the
    owner's quota lock (the lock :func:`turn_prepare` takes first): a turn starting in
    ``obj`` meanwhile either committed before the check (409 ``conversation_busy``) or
    starts after the delete (404). Never a reply, and a held reservation, left in a
    conversation that no longer exists.
    """
    with transaction.atomic():
        quota_lock(user=owner)
        if messages.filter(status=Message.Status.STREAMING).exists():
            raise Conflict(
                "A reply is streaming; cancel it or wait for it to finish.",
                code="conversation_busy",
            )
        obj.delete()


def context_delete(*, context: Context) -> None:
    """Delete a context with its conversations and flows (409 while a reply streams)."""
    _delete_unless_streaming(
        owner=context.user,
        messages=Message.objects.filter(conversation__context=context),
        obj=context,
    )


def conversation_update(*, conversation: Conversation, title: str) -> Conversation:
    """Rename a conversation; a generated title never overwrites it afterwards
    (docs/api.md#titles)."""
    conversation.title = title
    conversation.title_set_by_user = True
    conversation.save(update_fields=["title", "title_set_by_user", "updated_at"])
    return conversation


def conversation_delete(*, conversation: Conversation) -> None:
    """Delete a conversation and its messages (409 while a reply streams)."""
    _delete_unless_streaming(
        owner=conversation.user,
        messages=Message.objects.filter(conversation=conversation),
        obj=conversation,
    )


def replies_checkpoint(*, texts: dict[uuid.UUID, str]) -> set[uuid.UUID]:
    """Save the text so far of several streaming replies in one transaction.

    Also their heartbeat (``updated_at``). Returns the replies that should stop: gone, no
    longer streaming, or cancelled from another process.
    """
    now = timezone.now()
    stopped: set[uuid.UUID] = set()
    with transaction.atomic():
        for message_id, content in texts.items():
            updated = sql.update(
                Message,
                {"content": content, "updated_at": now},
                {"id": message_id, "status": Message.Status.STREAMING, "cancel_requested": False},
            )
            if not updated:
                stopped.add(message_id)
    return stopped


def message_request_cancel(*, message_id: uuid.UUID) -> bool:
    """Ask the process running a reply to stop it (it sees this at its next checkpoint)."""
    return (
        Message.objects.filter(pk=message_id, status=Message.Status.STREAMING).update(
            cancel_requested=True
        )
        == 1
    )
