"""The stock admin stays for raw data, dressed as the product and without the login-throttling
tables nobody manages by hand."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import signed_in

pytestmark = pytest.mark.django_db


def test_the_throttling_tables_are_not_in_the_admin(admin_user: Any) -> None:
    client = signed_in(admin_user)
    index = client.get("/admin/").content.decode()
    assert "/admin/axes/" not in index and "Access attempts" not in index
    for table in ("accessattempt", "accesslog", "accessfailurelog"):
        assert client.get(f"/admin/axes/{table}/").status_code == 404


def test_the_admin_wears_the_products_colours_and_logo(admin_user: Any) -> None:
    html = signed_in(admin_user).get("/admin/").content.decode()
    assert "css/admin.css" in html and 'class="admin-logo"' in html


def test_the_admin_index_leads_a_superuser_to_the_management_pages(admin_user: Any) -> None:
    html = signed_in(admin_user).get("/admin/").content.decode()
    assert 'href="/manage/providers/"' in html and 'href="/manage/models/"' in html


def test_the_user_menu_links_the_pages_for_superusers_only(admin_user: Any, owner: Any) -> None:
    assert 'href="/manage/providers/"' in signed_in(admin_user).get("/").content.decode()
    owner.is_staff = True
    owner.save()
    html = signed_in(owner).get("/").content.decode()
    assert 'href="/manage/providers/"' not in html and 'href="/manage/models/"' not in html
