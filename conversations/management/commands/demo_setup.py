"""``manage.py demo_setup``: the demo user, context and token that ``make run`` prints."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token

from conversations.models import Context

DEMO_USERNAME = "demo"
DEMO_PASSWORD = "demo-chat-2026"


class Command(BaseCommand):
    help = "Create (once) the demo user, a context and a token, and print how to use them."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000/")

    def handle(self, *args: Any, url: str, **options: Any) -> None:
        User = get_user_model()
        user, created = User.objects.get_or_create(username=DEMO_USERNAME)
        if created:
            user.set_password(DEMO_PASSWORD)
            user.save()
        context, _ = Context.objects.get_or_create(
            user=user, name="Work", defaults={"description": "Demo context"}
        )
        token, _ = Token.objects.get_or_create(user=user)
        base = url.rstrip("/")
        password = DEMO_PASSWORD if created or user.check_password(DEMO_PASSWORD) else "(changed)"
        body = (
            f'{{"context_id": "{context.id}", "messages": [{{"role": "user", '
            '"content": "I need to book a flight and call the client"}]}'
        )
        self.stdout.write(
            "\n".join(
                [
                    "",
                    f"  Chat page:  {base}/",
                    f"  Login:      {DEMO_USERNAME} / {password}",
                    f"  Admin:      {base}/admin/ (create a superuser: "
                    ".venv/bin/python manage.py createsuperuser)",
                    f"  API docs:   {base}/api/v1/docs/",
                    f"  Token:      {token.key}",
                    f"  Context id: {context.id}",
                    "",
                    "  Stream a reply:",
                    f"  curl -N {base}/api/v1/conversations/stream \\",
                    f"    -H 'Authorization: Token {token.key}' \\",
                    "    -H 'Content-Type: application/json' \\",
                    f"    -d '{body}'",
                    "",
                ]
            )
        )
