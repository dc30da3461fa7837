from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from conversations.retention.run import apply_retention


class Command(BaseCommand):
    help = ("Delete the conversations whose retention period has passed (with their images "
            "and share links; usage records stay). Conversations under legal hold and those "
            "being answered are kept. Safe to run twice at once. --dry-run only counts.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true",
                            help="Count what would be deleted; delete nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        report = apply_retention(dry_run=options["dry_run"], always_audit=True)
        if report.site_days is None and not report.examined:
            self.stdout.write("No retention period is set: conversations are kept forever "
                              "(set one on /manage/retention/).")
        self.stdout.write(str(report))
