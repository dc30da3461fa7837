from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from providers.emulators import main


class Command(BaseCommand):
    help = (
        "Serve local emulators of Cloudflare Workers AI, DashScope and Qianfan on one port "
        "(prints base URLs and the fake credentials; Ctrl-C stops)."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=9100)
        parser.add_argument(
            "--dashscope-accept-data-uri",
            action="store_true",
            help="accept data: URIs as DashScope images (default: 400 InvalidParameter)",
        )
        parser.add_argument(
            "--cloudflare-licence-agreed",
            action="store_true",
            help="start with the Llama 3.2 vision licence already accepted",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        main(
            options["host"],
            options["port"],
            dashscope_accept_data_uri=options["dashscope_accept_data_uri"],
            cloudflare_licence_agreed=options["cloudflare_licence_agreed"],
        )
