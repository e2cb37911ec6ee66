"""System checks for authentication, in words that say what to set.

===============  ==================================================================
accounts.E001    OIDC half configured: issuer without JWKS endpoint, or the reverse
accounts.E002    OIDC bearer auth on (issuer and JWKS set) without ``OIDC_API_AUDIENCE``
===============  ==================================================================
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register


@register("security")
def check_oidc(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """OIDC bearer auth is either off or fully configured (issuer, JWKS and audience)."""
    errors: list[CheckMessage] = []
    issuer = settings.OIDC_OP_ISSUER
    jwks = settings.OIDC_OP_JWKS_ENDPOINT
    if bool(issuer) != bool(jwks):
        present, missing = (
            ("OIDC_OP_ISSUER", "OIDC_OP_JWKS_ENDPOINT")
            if issuer
            else ("OIDC_OP_JWKS_ENDPOINT", "OIDC_OP_ISSUER")
        )
        errors.append(
            Error(
                f"OIDC is half configured: {present} is set but {missing} is not, so bearer "
                "tokens cannot be verified.",
                hint=f"Set {missing} too (see your identity provider's discovery document), "
                f"or unset {present} to turn OIDC bearer auth off.",
                id="accounts.E001",
            )
        )
    if issuer and jwks and not settings.OIDC_API_AUDIENCE:
        errors.append(
            Error(
                "OIDC bearer auth is on but OIDC_API_AUDIENCE is not set, so the token "
                "audience cannot be checked.",
                hint="Set OIDC_API_AUDIENCE to the audience (aud) your access tokens carry.",
                id="accounts.E002",
            )
        )
    return errors
