"""``python -m providers.emulators --port 9100``: serve all three emulators in the foreground."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from providers.emulators.server import main


def run(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m providers.emulators", description=__doc__)
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
    args = parser.parse_args(argv)
    main(
        args.host,
        args.port,
        dashscope_accept_data_uri=args.dashscope_accept_data_uri,
        cloudflare_licence_agreed=args.cloudflare_licence_agreed,
    )


if __name__ == "__main__":
    run()
