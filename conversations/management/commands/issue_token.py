"""``manage.py issue_token USERNAME [--create]``: print a DRF token for a user."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Print the API token of USERNAME (created when missing); --create makes the user."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("username")
        parser.add_argument(
            "--create", action="store_true", help="Create the user when it does not exist."
        )

    def handle(self, *args: Any, username: str, create: bool, **options: Any) -> None:
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            if not create:
                raise CommandError(f"No user named {username!r}. Use --create to make one.")
            # Django's username rules, so that no local user takes a name of the OIDC
            # users' namespace ("oidc:...": ':' is not allowed).
            field = User._meta.get_field(User.USERNAME_FIELD)
            try:
                field.run_validators(username)
            except ValidationError as exc:
                raise CommandError(
                    f"Invalid username {username!r}: {' '.join(exc.messages)}"
                ) from None
            user = User.objects.create_user(username=username)
            user.set_unusable_password()
            user.save()
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(token.key)
