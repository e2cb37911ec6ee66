"""``manage.py demo_setup``: the demo user, context and token that ``make run`` prints.

Without options it makes (once) the user ``demo`` with the password ``demo-chat-2026``, its
context "Work" and its token, and prints how to use them. The options make other such
users for scripts (the benchmarks in bench/): ``--username``, ``--context`` (repeatable),
``--requests-limit`` / ``--tokens-limit`` (the user's quota limits), and ``--json``, which
prints one JSON object (user id, username, token, context ids) instead of the text.
"""

from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token

from ai.quota.resets import quota_set_limits
from ai.quota.services import quota_get_or_create
from conversations.models import Context

DEMO_USERNAME = "demo"
DEMO_PASSWORD = "demo-chat-2026"
DEMO_CONTEXT = "Work"


class Command(BaseCommand):
    help = "Create (once) the demo user, a context and a token, and print how to use them."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000/")
        parser.add_argument(
            "--username", default=DEMO_USERNAME, help=f"the user (default {DEMO_USERNAME})"
        )
        parser.add_argument(
            "--context",
            action="append",
            dest="contexts",
            metavar="NAME",
            help=f"a context of the user, repeatable (default {DEMO_CONTEXT!r})",
        )
        parser.add_argument("--requests-limit", type=int, help="set the user's request quota")
        parser.add_argument("--tokens-limit", type=int, help="set the user's token quota")
        parser.add_argument(
            "--json",
            action="store_true",
            dest="as_json",
            help="print one JSON object instead of the text",
        )

    def handle(
        self,
        *args: Any,
        url: str,
        username: str = DEMO_USERNAME,
        contexts: list[str] | None = None,
        requests_limit: int | None = None,
        tokens_limit: int | None = None,
        as_json: bool = False,
        **options: Any,
    ) -> None:
        User = get_user_model()
        user, created = User.objects.get_or_create(username=username)
        if created:
            user.set_password(DEMO_PASSWORD)
            user.save()
        made = [
            Context.objects.get_or_create(
                user=user,
                name=name,
                defaults={"description": "Demo context" if name == DEMO_CONTEXT else ""},
            )[0]
            for name in contexts or [DEMO_CONTEXT]
        ]
        token, _ = Token.objects.get_or_create(user=user)
        if requests_limit is not None or tokens_limit is not None:
            quota = quota_get_or_create(user=user)
            quota_set_limits(
                quota=quota,
                period=quota.period,
                requests_limit=quota.requests_limit if requests_limit is None else requests_limit,
                tokens_limit=quota.tokens_limit if tokens_limit is None else tokens_limit,
            )
        if as_json:
            self.stdout.write(_json_line(user.pk, username, token.key, [c.id for c in made]))
            return
        context = made[0]
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
                    f"  Login:      {username} / {password}",
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


def _json_line(user_id: int, username: str, token: str, context_ids: list[Any]) -> str:
    """What ``--json`` prints: one object on one line."""
    return json.dumps(
        {
            "user_id": user_id,
            "username": username,
            "token": token,
            "context_ids": [str(pk) for pk in context_ids],
        }
    )
