"""manage.py create_api_token USERNAME [--name NAME]: prints a working token, once."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from conversations.api import tokens
from conversations.models import ApiToken

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_token", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_it_prints_a_token_that_works_on_the_api(owner: Any) -> None:
    out, err = run("alice", "--name", "ci pipeline")
    secret = out.strip()
    assert out == secret + "\n" and secret.startswith("lc-")
    token = tokens.verify(secret)
    assert token is not None and token.user == owner and token.name == "ci pipeline"
    response = Client().get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 200 and response.json()["data"]
    assert secret not in err and token.prefix in err
    assert secret not in " ".join(str(v) for v in ApiToken.objects.values().get().values())


def test_each_run_makes_a_new_token(owner: Any) -> None:
    first, _ = run("alice")
    second, _ = run("alice")
    assert first != second and ApiToken.objects.filter(user=owner).count() == 2
    assert set(ApiToken.objects.values_list("name", flat=True)) == {"command line"}


def test_an_unknown_user_is_an_error(owner: Any) -> None:
    with pytest.raises(CommandError, match="No user named 'mallory'"):
        run("mallory")
    assert not ApiToken.objects.exists()


def test_an_inactive_user_gets_no_token(owner: Any) -> None:
    owner.is_active = False
    owner.save()
    with pytest.raises(CommandError, match="inactive"):
        run("alice")
    assert not ApiToken.objects.exists()
