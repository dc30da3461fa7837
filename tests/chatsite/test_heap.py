"""Server processes keep what they start with out of the collector's full passes
(chatsite/heap.py): a daphne process and a Celery worker freeze their startup objects, after a
collection, so no garbage is frozen. Each check runs in a fresh interpreter: freezing this test
process would change every other test's collections."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(code: str) -> str:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "chatsite.settings"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True, cwd=ROOT, env=env)
    return out.stdout.strip().splitlines()[-1]


def test_it_freezes_the_live_objects_and_collects_the_garbage_first() -> None:
    code = """
import gc, weakref
from chatsite.heap import freeze_startup_heap

class Node:
    pass

kept = Node()
garbage = Node()
garbage.me = garbage  # a cycle: only the collector frees it
gone = weakref.ref(garbage)
del garbage
frozen = freeze_startup_heap()
print(frozen > 0, gone() is None, gc.get_freeze_count() == frozen, gc.isenabled())
"""
    assert run(code) == "True True True True"


@pytest.mark.parametrize(("daphne", "frozen"), [(True, True), (False, False)])
def test_only_a_daphne_process_freezes_its_startup_heap(daphne: bool, frozen: bool) -> None:
    # Loading the ASGI module in a daphne process freezes; importing it elsewhere (a
    # management command, a test) leaves the collector alone.
    code = ("import gc\n"
            + ("import daphne.cli\n" if daphne else "")
            + "import chatsite.asgi\n"
            + "print(gc.get_freeze_count() > 0)\n")
    assert run(code) == str(frozen)


def test_a_celery_worker_freezes_its_heap_when_ready() -> None:
    code = """
import django
django.setup()
import gc
from celery.signals import worker_ready
import conversations.answers.tasks
before = gc.get_freeze_count()
worker_ready.send(sender=None)
print(before == 0, gc.get_freeze_count() > 0)
"""
    assert run(code) == "True True"
