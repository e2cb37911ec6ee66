"""Signals flows send, so that layers above react inside the same transaction.

``flow_events_recorded`` is sent (synchronously, inside the transaction that wrote them)
after one or more :class:`~flows.models.FlowEvent` rows were stored, with the keyword
argument ``events``: a list of saved ``FlowEvent`` objects whose ``flow`` is loaded. The
webhooks app writes its outbox rows in the receiver, so a flow change and its deliveries
commit or roll back together (docs/api.md#webhooks).
"""

from __future__ import annotations

from django.dispatch import Signal

flow_events_recorded = Signal()
