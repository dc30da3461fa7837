"""The circuit breaker is shared by all processes through the cache: with Redis, failures another
process counted open the breaker here. Skipped when no Redis answers on this machine.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import Any

import pytest

from providers import breaker
from tests.conftest import ROOT, child_env

REDIS_URL = "redis://127.0.0.1:6379/15"


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _redis_up(), reason="no Redis on 127.0.0.1:6379")

ANOTHER_PROCESS = """
import django
django.setup()
from providers import breaker
for _n in range(3):
    breaker.record_failure("dashscope", "quota_exhausted")
print(breaker.state("dashscope").open)
"""


@pytest.fixture
def redis_cache(settings: Any) -> Any:
    # The cache the settings build from REDIS_URL (chatsite/settings.py), in this process too.
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": REDIS_URL, "KEY_PREFIX": "llamachat"}}
    breaker.reset("dashscope")
    yield
    breaker.reset("dashscope")


def test_failures_counted_by_another_process_open_the_breaker_here(redis_cache: Any) -> None:
    assert not breaker.state("dashscope").open
    done = subprocess.run(
        [sys.executable, "-c", ANOTHER_PROCESS], cwd=ROOT, capture_output=True, text=True,
        env=child_env(REDIS_URL=REDIS_URL, DJANGO_SETTINGS_MODULE="chatsite.settings"),
        timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("True")
    state = breaker.state("dashscope")
    assert state.open and state.last_error == "quota_exhausted" and state.seconds_left > 0
    # An answer here that gets its first token closes it for everyone.
    breaker.record_success("dashscope")
    assert not breaker.state("dashscope").open
