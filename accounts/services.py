"""The one authentication path of every transport (docs/api.md#authentication).

REST (DRF), the streaming views (SSE and JSON) and the WebSocket all call
:func:`authenticate` with the ``Authorization`` value they received, so the same
credentials get the same answer, the same throttle and the same log line everywhere.
Without credentials it answers ``None`` and the caller falls back to the Django session.

Users found by an OIDC subject are bound to it by :class:`accounts.models.OIDCIdentity`,
keyed by ``(issuer, sub)``, never by username.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import FieldDoesNotExist
from django.db import IntegrityError, transaction
from rest_framework.authentication import HTTP_HEADER_ENCODING

from accounts.access_tokens import bearer_enabled, verify_access_token
from accounts.api_tokens import user_for_api_token
from accounts.errors import AuthenticationError
from accounts.models import OIDCIdentity
from accounts.throttling import failure_record

logger = logging.getLogger("accounts")

#: Usernames of users made from OIDC subjects start with this. ``:`` is refused by
#: Django's username validator (forms, ``createsuperuser``, ``issue_token --create``), so
#: no local user takes such a name; lookups never go by username anyway.
USERNAME_PREFIX = "oidc:"


# --- credentials --------------------------------------------------------------------------------
def parse_authorization(value: str | bytes | None) -> tuple[str, str] | None:
    """``(scheme, credentials)`` for ``Bearer``/``Token`` headers, ``None`` for none or
    another scheme. Raises :class:`AuthenticationError` for a ``Bearer``/``Token`` header
    without exactly one credential."""
    if isinstance(value, bytes):
        try:
            value = value.decode(HTTP_HEADER_ENCODING)
        except UnicodeDecodeError:
            raise AuthenticationError(
                "Invalid Authorization header.", reason="malformed_header"
            ) from None
    parts = (value or "").split()
    if not parts:
        return None
    scheme = parts[0].lower()
    if scheme not in ("bearer", "token"):
        return None
    if len(parts) != 2:
        raise AuthenticationError(
            f"Invalid {parts[0]} header: expected exactly one credential.",
            reason="malformed_header",
        )
    return scheme, parts[1]


def _user_for(scheme: str, credentials: str) -> AbstractBaseUser | None:
    if scheme == "token":
        return user_for_api_token(credentials)
    if not bearer_enabled():
        return None
    claims = verify_access_token(credentials)
    return user_for_claims(claims, issuer=settings.OIDC_OP_ISSUER)


def authenticate(
    authorization: str | bytes | None, *, client_ip: str, transport: str
) -> AbstractBaseUser | None:
    """The user named by an ``Authorization`` value (sync; touches the database).

    ``Token <key>`` and ``Bearer <jwt>`` (when bearer auth is on; its key must be held,
    see :func:`accounts.access_tokens.prefetch_key`) give the active user or raise
    :class:`AuthenticationError` (401), after counting the failure for the client's
    address (past the limit: :class:`~accounts.errors.TooManyAuthenticationFailures`,
    429). No header, another scheme, or ``Bearer`` while bearer auth is off: ``None``.
    ``transport`` (``rest``, ``sse``, ``ws``) only labels the log line.
    """
    scheme = "-"
    try:
        parsed = parse_authorization(authorization)
        if parsed is None:
            return None
        scheme, credentials = parsed
        return _user_for(scheme, credentials)
    except AuthenticationError as exc:
        logger.info(
            "auth.rejected",
            extra={"scheme": scheme, "reason": exc.reason, "transport": transport},
        )
        failure_record(client_ip=client_ip)
        raise


# --- users from OIDC claims ---------------------------------------------------------------------
def oidc_username(issuer: str, sub: str) -> str:
    """The username given to a new user for subject ``sub`` of ``issuer``: stable, at most
    150 characters, different for the same ``sub`` of two issuers."""
    digest = hashlib.sha256(f"{issuer}\n{sub}".encode()).hexdigest()[:32]
    return f"{USERNAME_PREFIX}{digest}"


def _profile_fields(claims: Mapping[str, Any]) -> dict[str, str]:
    """Email and names from the claims, for the fields the user model has."""
    model = get_user_model()
    candidates = {
        "email": claims.get("email"),
        "first_name": claims.get("given_name") or claims.get("name"),
        "last_name": claims.get("family_name"),
    }
    fields: dict[str, str] = {}
    for name, value in candidates.items():
        if not isinstance(value, str) or not value:
            continue
        try:
            field = model._meta.get_field(name)
        except FieldDoesNotExist:
            continue
        fields[name] = value[: field.max_length] if field.max_length else value
    return fields


def user_for_claims(claims: Mapping[str, Any], *, issuer: str) -> AbstractBaseUser:
    """Find or create the user of verified ``claims`` by ``(issuer, sub)``; update email and
    names. Raises :class:`AuthenticationError` when that user is inactive."""
    sub = str(claims["sub"])
    fields = _profile_fields(claims)
    identity = (
        OIDCIdentity.objects.select_related("user").filter(issuer=issuer, subject=sub).first()
    )
    if identity is None:
        model = get_user_model()
        try:
            with transaction.atomic():
                user = model._default_manager.create_user(  # type: ignore[attr-defined]
                    **{model.USERNAME_FIELD: oidc_username(issuer, sub)}, **fields
                )
                OIDCIdentity.objects.create(user=user, issuer=issuer, subject=sub)
            logger.info("auth.user_created", extra={"user_id": user.pk})
            return user
        except IntegrityError:  # a concurrent first request created it
            identity = OIDCIdentity.objects.select_related("user").get(issuer=issuer, subject=sub)
    user = identity.user
    changed = [name for name, value in fields.items() if getattr(user, name) != value]
    if changed:
        for name in changed:
            setattr(user, name, fields[name])
        user.save(update_fields=changed)
    if not user.is_active:
        raise AuthenticationError("User inactive or deleted.", reason="inactive_user")
    return user
