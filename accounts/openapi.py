"""How the schema documents :class:`accounts.drf.CredentialsAuthentication`: an API token
(``Authorization: Token <key>``) or an OIDC access token (``Authorization: Bearer <jwt>``),
either one."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class CredentialsScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.drf.CredentialsAuthentication"
    name = ["tokenAuth", "jwtAuth"]

    def get_security_requirement(self, auto_schema: Any) -> list[dict[str, list[Any]]]:
        """Either scheme (OR), not both."""
        return [{"tokenAuth": []}, {"jwtAuth": []}]

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, Any]]:
        """The two schemes."""
        return [
            {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": 'An API token with the prefix "Token", e.g. "Token 0f3c..."',
            },
            {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
        ]
