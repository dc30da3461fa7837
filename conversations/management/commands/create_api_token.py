"""manage.py create_api_token USERNAME [--name NAME]: print a new API token (shown once)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from conversations.api import tokens


class Command(BaseCommand):
    help = ("Create an API token for USERNAME and print it on standard output. Only its hash "
            "is stored: copy it now, it cannot be shown again.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="command line",
                            help="What the token is for (shown on the profile page).")

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        try:
            user = User.objects.get(**{User.USERNAME_FIELD: options["username"]})
        except User.DoesNotExist:
            raise CommandError(f"No user named {options['username']!r}.") from None
        try:
            created = tokens.create_token(user, options["name"])
        except tokens.TokenRefused as exc:
            raise CommandError(str(exc)) from None
        # The token alone on stdout, so `TOKEN=$(manage.py create_api_token bob)` works; the
        # note goes to stderr.
        self.stdout.write(created.secret)
        self.stderr.write(f"Created token {created.token.prefix}… ({created.token.name}) for "
                          f"{user.get_username()}. It is shown only this once.")
