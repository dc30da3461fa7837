from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from providers.models import ModelConfig, Provider
from providers.probes import run_probes
from providers.services import ProbeResult, config_problem, probe_model


class Command(BaseCommand):
    help = ("Call every enabled model once with a tiny prompt and print a table. With --probe, "
            "ask each configured vendor the questions its documents leave open instead.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--probe", action="store_true",
            help="a few small calls per configured vendor that settle open questions (two "
                 "images in one DashScope request, data: images, Qianfan's `system`, "
                 "Cloudflare messages + image); prints what each vendor answered")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["probe"]:
            self._probe()
            return
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


    def _probe(self) -> None:
        configs = {p.kind: p.client_config() for p in Provider.objects.all()
                   if p.credentials_readable() and p.is_configured}
        if not configs:
            raise CommandError("no provider has credentials: nothing to ask")
        findings = async_to_sync(run_probes)(configs, settings.SITE_URL)
        header = f"{'vendor':<11} {'question':<54} {'HTTP':>4}  answer"
        self.stdout.write(header)
        self.stdout.write("-" * len(header))
        for finding in findings:
            status = "-" if finding.status is None else str(finding.status)
            self.stdout.write(f"{finding.vendor:<11} {finding.question:<54} {status:>4}  "
                              f"{finding.answer[:160]}")


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)

