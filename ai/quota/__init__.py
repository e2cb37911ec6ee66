"""Quota per user: :mod:`ai.quota.periods` (pure period maths), :mod:`ai.quota.services`
(the writes, and the life of a reply's reservation), :mod:`ai.quota.selectors` (the Quota
resource as a client sees it)."""
