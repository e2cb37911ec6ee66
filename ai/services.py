"""Writes of the ai app: the usage ledger (quota writes are in :mod:`ai.quota.services`)."""

from __future__ import annotations

from decimal import Decimal
from functools import partial
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from ai.models import UsageRecord
from core import metrics, sql


def usage_record_build(
    *,
    user: AbstractBaseUser,
    provider: str,
    model: str,
    purpose: str,
    input_tokens: int,
    output_tokens: int,
    estimated: bool,
    tokens_charged: int,
    outcome: str,
    error_code: str = "",
    duration_ms: int = 0,
    context: Any = None,
    conversation: Any = None,
    message: Any = None,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    cost: Decimal = Decimal(0),
    currency: str = "USD",
) -> UsageRecord:
    """One line of the usage ledger for one AI call (a reply or a flow extraction), unsaved:
    :func:`usage_records_create` writes several in one INSERT.

    ``purpose`` is a :class:`UsageRecord.Purpose` (``reply``, ``extraction``), ``outcome`` a
    :class:`UsageRecord.Outcome` (``complete``, ``cancelled``, ``failed``,
    ``interrupted``). ``estimated`` says the token counts were estimated from the text
    because the provider reported none. ``tokens_charged`` is what was counted against the
    quota. ``context``, ``conversation`` and ``message`` are model instances or None.
    ``cache_read_tokens`` and ``cache_write_tokens`` are parts of ``input_tokens``;
    ``cost`` is what the call cost in ``currency`` (see :mod:`ai.pricing`).
    """
    if purpose not in UsageRecord.Purpose.values:
        raise ValueError(f"Unknown usage purpose {purpose!r}.")
    if outcome not in UsageRecord.Outcome.values:
        raise ValueError(f"Unknown usage outcome {outcome!r}.")
    return UsageRecord(
        user=user,
        provider=provider[:32],
        model=(model or "")[:128],
        purpose=purpose,
        input_tokens=max(0, int(input_tokens)),
        output_tokens=max(0, int(output_tokens)),
        cache_read_tokens=max(0, int(cache_read_tokens)),
        cache_write_tokens=max(0, int(cache_write_tokens)),
        estimated=estimated,
        cost=max(Decimal(0), cost),
        currency=currency,
        tokens_charged=max(0, int(tokens_charged)),
        outcome=outcome,
        error_code=(error_code or "")[:32],
        duration_ms=max(0, int(duration_ms)),
        context=context,
        conversation=conversation,
        message=message,
    )


def usage_records_create(records: list[UsageRecord]) -> list[UsageRecord]:
    """Write ledger lines built by :func:`usage_record_build`, in one INSERT (plain SQL:
    every turn writes them; their ids are not read back)."""
    sql.insert(records)
    _count_when_committed(records)
    return records


def usage_record_create(**fields: Any) -> UsageRecord:
    """Write one line of the usage ledger (the arguments of :func:`usage_record_build`)."""
    record = usage_record_build(**fields)
    record.save(force_insert=True)
    _count_when_committed([record])
    return record


def _count_when_committed(records: list[UsageRecord]) -> None:
    """Add the lines' cost and cache tokens to ``/metrics`` once their transaction commits
    (at once outside one): a rolled-back line is not counted."""
    transaction.on_commit(partial(metrics.record_usage_lines, records))
