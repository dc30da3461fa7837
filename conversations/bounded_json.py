"""The one JSON reader for bodies and files that users send: bounded in depth as well as size.

Python's parser recurses once per nesting level: a body of `[[[[...]]]]` a few hundred thousand
levels deep ends in RecursionError (a 500) before any limit of ours is checked, and a merely
deep one costs stack in every walk after it. Nothing we accept nests more than a few levels.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 32


class InvalidJson(ValueError):
    """Not JSON, not UTF-8, or nested deeper than MAX_DEPTH."""


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidJson("not valid JSON") from None
    if _deeper_than(value, max_depth):
        raise InvalidJson(f"nested more than {max_depth} levels deep")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Iterative, so that checking depth cannot itself overflow the stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, dict | list))
    return False
