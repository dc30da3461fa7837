from __future__ import annotations

from datetime import datetime
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from providers import status
from providers.models import ModelConfig, Provider
from providers.probes import run_probes
from providers.services import ProbeResult, config_problem, probe_model


class Command(BaseCommand):
    help = ("Call every enabled model once with a tiny prompt and print a table, then each "
            "provider's status (as on the providers page). With --status, only print the "
            "status from the last calls and tests. With --probe, ask each configured vendor the "
            "questions its documents leave open instead.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--probe", action="store_true",
            help="a few small calls per configured vendor that settle open questions (two "
                 "images in one DashScope request, data: images, Qianfan's `system`, "
                 "Cloudflare messages + image); prints what each vendor answered")
        parser.add_argument(
            "--status", action="store_true",
            help="print each provider's status from its last call or test; call nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["probe"]:
            self._probe()
            return
        if options["status"]:
            self._status()
            return
        models = list(ModelConfig.objects.usable().select_related("provider"))
        results: list[ProbeResult] = []
        for model in models:
            problem = config_problem(model.provider, model.slug)
            result = problem or async_to_sync(probe_model)(model)
            status.record_call(model.provider_id, ok=result.ok, kind=result.kind,
                               message=f"{result.kind}: {result.message}",
                               latency_ms=result.duration_ms, force=True)
            results.append(result)
        header = f"{'model':<24} {'result':<16} {'ttft ms':>8} {'total ms':>9} {'tokens':>7}  note"
        self.stdout.write(header)
        self.stdout.write("-" * len(header))
        for r in results:
            self.stdout.write(
                f"{r.model:<24} {r.kind:<16} {_n(r.ttft_ms):>8} {_n(r.duration_ms):>9} "
                f"{_n(r.completion_tokens):>7}  {r.message[:80]}")
        if not models:
            self.stdout.write("no enabled model")
        self.stdout.write("")
        self._status()
        if any(not r.ok for r in results):
            raise CommandError(f"{sum(not r.ok for r in results)} of {len(results)} failed")

    def _status(self) -> None:
        """Each provider's status, as the providers page and /healthz show it."""
        header = (f"{'provider':<12} {'status':<9} {'failing since':<17} {'last checked':<17} "
                  f"{'error kind':<16} last error")
        self.stdout.write(header)
        self.stdout.write("-" * len(header))
        for state in status.states():
            provider = state.provider
            self.stdout.write(
                f"{provider.kind:<12} {state.state:<9} {_t(state.failing_since):<17} "
                f"{_t(provider.last_checked_at):<17} {state.last_error_kind or '-':<16} "
                f"{state.last_error[:100]}")

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


def _t(value: datetime | None) -> str:
    return "-" if value is None else timezone.localtime(value).strftime("%Y-%m-%d %H:%M")

