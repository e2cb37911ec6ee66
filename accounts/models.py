"""OIDC identities: which user an OpenID provider's subject is (docs/api.md#oidc-bearer-tokens).

A user found by a bearer token or a browser login is looked up by ``(issuer, subject)``
here, never by username: the same ``sub`` from two issuers is two users, and no local
username (``issue_token --create``, ``createsuperuser``, the admin) can ever be taken for
an OIDC user's.
"""

from django.conf import settings
from django.db import models


class OIDCIdentity(models.Model):
    """One OpenID provider subject, bound to one local user."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="oidc_identities"
    )
    issuer = models.CharField(max_length=512)
    #: OpenID Connect Core 1.0, 2: ``sub`` is at most 255 ASCII characters.
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "OIDC identity"
        verbose_name_plural = "OIDC identities"
        constraints = [
            models.UniqueConstraint(fields=["issuer", "subject"], name="oidc_identity_unique")
        ]

    def __str__(self) -> str:
        return f"{self.subject} @ {self.issuer}"
