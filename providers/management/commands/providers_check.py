from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand, CommandError

from providers.models import ModelConfig
from providers.services import ProbeResult, config_problem, probe_model


class Command(BaseCommand):
    help = "Call every enabled model once with a tiny prompt and print a table."

    def handle(self, *args: Any, **options: Any) -> None:
        models = list(ModelConfig.objects.usable().select_related("provider"))
        results: list[ProbeResult] = []
        for model in models:
            problem = config_problem(model.provider, model.slug)
            results.append(problem or async_to_sync(probe_model)(model))
        header = f"{'model':<24} {'result':<16} {'ttft ms':>8} {'total ms':>9} {'tokens':>7}  note"
        self.stdout.write(header)
        self.stdout.write("-" * len(header))
        for r in results:
            self.stdout.write(
                f"{r.model:<24} {r.kind:<16} {_n(r.ttft_ms):>8} {_n(r.duration_ms):>9} "
                f"{_n(r.completion_tokens):>7}  {r.message[:80]}")
        if not models:
            self.stdout.write("no enabled model")
        if any(not r.ok for r in results):
            raise CommandError(f"{sum(not r.ok for r in results)} of {len(results)} failed")


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)
