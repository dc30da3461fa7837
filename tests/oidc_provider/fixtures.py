"""pytest fixtures: `oidc_provider`, the test provider process, reset before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import ARTIFACTS
from tests.oidc_provider.process import ProviderProcess


@pytest.fixture(scope="session")
def oidc_provider_process() -> Iterator[ProviderProcess]:
    provider = ProviderProcess(ARTIFACTS / "logs" / "oidc-provider.log")
    yield provider
    provider.stop()


@pytest.fixture
def oidc_provider(oidc_provider_process: ProviderProcess) -> ProviderProcess:
    oidc_provider_process.reset()
    return oidc_provider_process
