"""Bind users made before OIDC identities existed (username ``oidc:<sub>``) to the issuer
configured when this migration runs, so they keep their data. Without a configured issuer
nothing is adopted (those subjects get new users at their next login)."""

from django.conf import settings
from django.db import migrations

LEGACY_PREFIX = "oidc:"
HASHED_PREFIX = "oidc:sha256:"  # the old scheme for long subjects: not reversible


def adopt(apps, schema_editor):
    issuer = getattr(settings, "OIDC_OP_ISSUER", "")
    if not issuer:
        return
    user_model = apps.get_model(settings.AUTH_USER_MODEL)
    identity_model = apps.get_model("accounts", "OIDCIdentity")
    legacy = user_model.objects.filter(username__startswith=LEGACY_PREFIX).exclude(
        username__startswith=HASHED_PREFIX
    )
    for user in legacy.iterator():
        subject = user.username[len(LEGACY_PREFIX) :]
        if subject and len(subject) <= 255:
            identity_model.objects.get_or_create(
                issuer=issuer, subject=subject, defaults={"user": user}
            )


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]

    operations = [migrations.RunPython(adopt, migrations.RunPython.noop)]
