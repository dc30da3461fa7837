from __future__ import annotations

import os
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from providers.models import Provider
from providers.services import sync_from_env


class Command(BaseCommand):
    help = "Seed the catalogue and apply CLOUDFLARE_*, DASHSCOPE_*, QIANFAN_* variables."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            changes = sync_from_env(os.environ)
        except ValidationError as exc:  # e.g. a *_BASE_URL off the allow-list: nothing applied
            raise CommandError(" ".join(exc.messages)) from None
        for line in changes or ["providers: nothing to change"]:
            self.stdout.write(line)
        if not any(p.is_configured for p in Provider.objects.filter(enabled=True)):
            self.stdout.write(
                "No provider has keys yet, so no model can answer. Set CLOUDFLARE_*, "
                "DASHSCOPE_* or QIANFAN_* (docs/deployment.md) or enter keys in the admin, or "
                "try `make demo`: every model answers from local emulators, no keys needed.")
