"""Prices of models and the cost of a call (docs/api.md#cost).

A call's :class:`~ai.providers.base.Usage` has one meaning whatever the provider:
``input_tokens`` is the whole prompt, cached parts included, and ``cache_read_tokens`` /
``cache_write_tokens`` are parts of it (the adapters normalise: OpenAI's ``prompt_tokens``
already includes ``prompt_tokens_details.cached_tokens``; Anthropic's ``input_tokens``
leaves out ``cache_read_input_tokens`` and ``cache_creation_input_tokens``, so its adapter
adds them). :func:`cost_of` therefore bills

- ``input_tokens - cache_read_tokens - cache_write_tokens`` at the input rate,
- ``cache_read_tokens`` at the cache-read rate, ``cache_write_tokens`` at the cache-write
  rate, ``output_tokens`` at the output rate,

so no token is counted twice. A model without a price costs nothing (and is reported by
the ``ai.W001`` system check and flagged in the admin).

Prices are read once and kept in the process for ``PRICE_CACHE_SECONDS`` (default 60):
a turn's statements stay what they were (``tests/test_plain_sql.py``). Saving or
deleting a price in this process drops the copy at once; other processes see it within
that time.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone

from ai.models import ModelPrice, UsageRecord
from ai.providers.base import Usage

#: Providers whose calls cost nothing by nature (never reported as unpriced).
FREE_PROVIDERS = frozenset({"mock"})

MILLION = Decimal(1_000_000)
#: The precision costs are stored and sent with (the ``cost`` columns' decimal places).
COST_QUANTUM = Decimal("0.00000001")

#: A snapshot date at the end of a model name: ``-2024-07-18`` or ``-20251001``.
_SNAPSHOT_DATE = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")

_cache: dict[str, Any] = {"loaded_at": None, "prices": {}}


def clear_cache() -> None:
    """Forget the prices read so far (the next lookup reads them again)."""
    _cache["loaded_at"] = None
    _cache["prices"] = {}


@receiver(post_save, sender=ModelPrice, dispatch_uid="ai.pricing.saved")
@receiver(post_delete, sender=ModelPrice, dispatch_uid="ai.pricing.deleted")
def _price_changed(**kwargs: Any) -> None:
    clear_cache()


def _prices() -> dict[tuple[str, str], list[ModelPrice]]:
    """Every price, by (provider, model), newest ``valid_from`` first (cached)."""
    ttl = float(getattr(settings, "PRICE_CACHE_SECONDS", 60))
    loaded_at = _cache["loaded_at"]
    now = time.monotonic()
    if loaded_at is None or now - loaded_at > ttl:
        table: dict[tuple[str, str], list[ModelPrice]] = {}
        for price in ModelPrice.objects.order_by("-valid_from"):
            table.setdefault((price.provider, price.model), []).append(price)
        _cache["prices"], _cache["loaded_at"] = table, now
    return _cache["prices"]


def _names(model: str) -> Iterable[str]:
    """``model`` itself, then its name without a snapshot date (OpenAI's
    ``gpt-4o-mini-2024-07-18`` takes the price of ``gpt-4o-mini``, Anthropic's
    ``claude-haiku-4-5-20251001`` that of ``claude-haiku-4-5``)."""
    yield model
    base = _SNAPSHOT_DATE.sub("", model)
    if base != model:
        yield base


def price_for(provider: str, model: str, at: date | datetime) -> ModelPrice | None:
    """The price of ``provider``/``model`` valid on the day of ``at`` (the latest whose
    ``valid_from`` is not after it), or None when the model has none.

    An exact model name wins over its name without a snapshot date (see :func:`_names`).
    """
    if isinstance(at, datetime):
        day = timezone.localdate(at) if timezone.is_aware(at) else at.date()
    else:
        day = at
    prices = _prices()
    for name in _names(model or ""):
        for price in prices.get((provider, name), ()):
            if price.valid_from <= day:
                return price
    return None


def cost_of(usage: Usage, price: ModelPrice | None) -> Decimal:
    """What ``usage`` costs at ``price`` (0 without one), each kind of token at its own
    rate and none counted twice (see the module's docstring)."""
    if price is None:
        return Decimal(0).quantize(COST_QUANTUM)
    cached = usage.cache_read_tokens + usage.cache_write_tokens
    uncached = max(0, usage.input_tokens - cached)
    total = (
        uncached * price.input_per_mtok
        + usage.cache_read_tokens * price.cache_read_per_mtok
        + usage.cache_write_tokens * price.cache_write_per_mtok
        + usage.output_tokens * price.output_per_mtok
    )
    return (total / MILLION).quantize(COST_QUANTUM)


def priced(usage: Usage, *, provider: str, model: str, at: date | datetime) -> Usage:
    """Set ``usage.cost`` and ``usage.currency`` from the price valid at ``at``; returns
    ``usage``. Without a price the cost is 0 in the default currency (``USD``)."""
    price = price_for(provider, model, at)
    usage.cost = cost_of(usage, price)
    usage.currency = price.currency if price is not None else "USD"
    return usage


def unpriced_models(
    extra: Iterable[tuple[str, str]] = (), at: date | datetime | None = None
) -> list[tuple[str, str]]:
    """(provider, model) pairs seen in the usage ledger, plus ``extra``, that have no
    price valid at ``at`` (default: today), sorted; free providers (``mock``) left out.
    The ledger's pairs are listed by the database (``DISTINCT``)."""
    day = at or timezone.localdate()
    seen = set(
        UsageRecord.objects.exclude(provider__in=FREE_PROVIDERS)
        .values_list("provider", "model")
        .distinct()
        .order_by()
    )
    seen.update((p, m) for p, m in extra if p not in FREE_PROVIDERS)
    return sorted((p, m) for p, m in seen if price_for(p, m, day) is None)
