from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from conversations.images.attachments import cleanup


class Command(BaseCommand):
    help = ("Delete unsent uploads past UPLOAD_GRACE_HOURS, images past IMAGE_RETENTION_DAYS "
            "and stored files no row refers to. Safe to run twice at once.")

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(str(cleanup()))
