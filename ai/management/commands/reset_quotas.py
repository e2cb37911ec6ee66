"""``manage.py reset_quotas``: reset used counters and start a new period.

See docs/api.md#commands.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ai.models import Quota
from ai.quota.resets import quota_reset


class Command(BaseCommand):
    help = (
        "Reset quota counters and start a new period. Choose --user USERNAME (repeatable), "
        "--all, or --expired (only quotas whose period has passed; safe to run from cron). "
        "Reservations of replies in flight are never touched."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--user",
            action="append",
            dest="usernames",
            default=[],
            metavar="USERNAME",
            help="Reset this user's quota (repeat for several users).",
        )
        parser.add_argument("--all", action="store_true", help="Reset every user's quota.")
        parser.add_argument(
            "--expired",
            action="store_true",
            help="Only quotas whose period has passed (alone: of all users).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Say what would be reset; change nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        usernames: list[str] = options["usernames"]
        reset_all: bool = options["all"]
        expired: bool = options["expired"]
        dry_run: bool = options["dry_run"]
        if not (usernames or reset_all or expired):
            raise CommandError("Choose whose quota to reset: --user USERNAME, --all or --expired.")
        if usernames and reset_all:
            raise CommandError("Give either --user or --all, not both.")

        users = None
        if usernames:
            user_model = get_user_model()
            lookup = f"{user_model.USERNAME_FIELD}__in"
            users = list(user_model.objects.filter(**{lookup: usernames}))
            found = {str(user.get_username()) for user in users}
            unknown = sorted(set(usernames) - found)
            if unknown:
                raise CommandError(f"Unknown user(s): {', '.join(unknown)}. Nothing was reset.")
            with_quota = set(Quota.objects.filter(user__in=users).values_list("user_id", flat=True))
            for user in users:
                if user.pk not in with_quota:
                    self.stdout.write(
                        f"skipped {user.get_username()}: no quota yet (starts fresh on first use)"
                    )

        results = quota_reset(users=users, only_expired=expired, dry_run=dry_run)
        verb = "would reset" if dry_run else "reset"
        for result in results:
            resets = result.resets_at.isoformat() if result.resets_at else "never (period none)"
            in_flight = (
                f"; {result.requests_reserved} in flight kept" if result.requests_reserved else ""
            )
            self.stdout.write(
                f"{verb} {result.username}: requests used {result.requests_used} -> 0, "
                f"tokens used {result.tokens_used} -> 0 ({result.period}, next reset {resets})"
                f"{in_flight}"
            )
        summary = f"{'Dry run: would reset' if dry_run else 'Reset'} {len(results)} quota(s)."
        self.stdout.write(self.style.SUCCESS(summary))
