"""The first administrator: offered only on an empty site, created exactly once."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import Client

from chatsite import bootstrap
from tests.conftest import PASSWORD

FORM = {"username": "founder", "email": "f@example.com", "password1": PASSWORD,
        "password2": PASSWORD}


@pytest.mark.django_db
def test_it_sends_every_page_to_the_setup_form_on_an_empty_site(client: Client) -> None:
    for path in ["/", "/accounts/login/", "/admin/"]:
        response = client.get(path)
        assert response.status_code == 302
        assert response["Location"] == "/setup/"
    assert "Create the first administrator" in client.get("/setup/").content.decode()


@pytest.mark.django_db
def test_it_creates_a_superuser_signs_them_in_and_closes_the_form(client: Client) -> None:
    response = client.post("/setup/", FORM)
    assert response.status_code == 302 and response["Location"] == "/"
    user = get_user_model().objects.get()
    assert user.is_superuser and user.is_staff and user.username == "founder"
    assert client.get("/").status_code == 200
    # The form never works again, for anyone.
    other = Client()
    assert other.get("/setup/")["Location"] == "/accounts/login/"
    other.post("/setup/", {**FORM, "username": "intruder"})
    assert get_user_model().objects.count() == 1


@pytest.mark.django_db
def test_it_is_never_offered_once_a_user_exists(client: Client, owner: Any) -> None:
    assert client.get("/setup/")["Location"] == "/accounts/login/"
    client.post("/setup/", FORM)
    assert not get_user_model().objects.filter(username="founder").exists()


@pytest.mark.django_db
def test_it_rejects_mismatched_or_weak_passwords_and_changes_nothing(client: Client) -> None:
    response = client.post("/setup/", {**FORM, "password2": "different-password-1"})
    assert "The two passwords differ." in response.content.decode()
    response = client.post("/setup/", {**FORM, "password1": "123", "password2": "123"})
    assert response.status_code == 200
    assert "too short" in response.content.decode()
    assert get_user_model().objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_it_creates_exactly_one_admin_under_concurrent_requests() -> None:
    results: list[str] = []
    barrier = threading.Barrier(12)

    def attempt(index: int) -> None:
        barrier.wait()
        try:
            bootstrap.create_first_admin(f"admin{index}", "", PASSWORD)
            results.append("created")
        except bootstrap.AlreadyBootstrapped:
            results.append("refused")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count("created") == 1
    assert results.count("refused") == 11
    assert get_user_model().objects.filter(is_superuser=True).count() == 1
