from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from providers import crypto
from providers.models import Provider


class Command(BaseCommand):
    help = "Re-encrypt every stored credential under the first FIELD_ENCRYPTION_KEYS key."

    def handle(self, *args: Any, **options: Any) -> None:
        rotated, unreadable = 0, []
        with transaction.atomic():
            for provider in Provider.objects.select_for_update().exclude(credentials_encrypted=""):
                try:
                    provider.credentials_encrypted = crypto.rotate(provider.credentials_encrypted)
                except crypto.CredentialsUnreadable:
                    unreadable.append(provider.kind)
                    continue
                provider.save(update_fields=["credentials_encrypted"])
                rotated += 1
        self.stdout.write(f"re-encrypted {rotated} provider(s) under the first key")
        if unreadable:
            raise CommandError(
                "cannot decrypt with any configured key (re-enter in the admin): "
                + ", ".join(unreadable))
