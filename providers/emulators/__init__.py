"""Local HTTP emulators of Cloudflare Workers AI, Alibaba DashScope and Baidu Qianfan.

See README.md in this folder for routes, faults and the ``[[emu:...]]`` magic syntax.
"""

from __future__ import annotations

from providers.emulators.faults import FAULT_PARAMS, Fault, parse_magic
from providers.emulators.server import EmulatorServer, main
from providers.emulators.state import Credentials, RecordedRequest

FAULT_KINDS = tuple(FAULT_PARAMS)

__all__ = [
    "FAULT_KINDS",
    "Credentials",
    "EmulatorServer",
    "Fault",
    "RecordedRequest",
    "main",
    "parse_magic",
]
