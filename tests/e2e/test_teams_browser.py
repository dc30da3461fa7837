"""Team pages and invitations in headless Chromium against a real daphne process: a manager
invites three people and sees them join (three browser contexts), removes a member, and the
pages fit a phone."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group

from conversations.models import TeamSettings
from tests.conftest import PASSWORD, screenshot
from tests.e2e.browser import sign_in
from tests.e2e.test_accessibility import (  # noqa: F401 (axe_path: the fixture, by name)
    AXE,
    RUN_AXE,
    axe_path,
)
from tests.support import seed_catalogue

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
NEW_PASSWORD = "a-long-and-unusual-passphrase-42"
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}


@pytest.fixture
def team(owner: Any, member: Any) -> Group:
    seed_catalogue()
    group = Group.objects.create(name="research")
    group.user_set.add(owner, member)
    TeamSettings.objects.create(team=group).managers.add(owner)
    return group


def _invite(page: Any, email: str = "", role: str = "member") -> str:
    page.fill("#id_email", email)
    page.select_option("#id_role", role)
    page.click("[data-invite-form] button[type=submit]")
    page.wait_for_selector("[data-invite-url]")
    return str(page.locator("[data-invite-url]").inner_text()).strip()


def _no_sideways_scroll(page: Any) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], f"page is {width}px wide"


def test_a_manager_invites_three_people_and_sees_them_join(live_app: Any, browser: Any,
                                                            page: Any, team: Group) -> None:
    sign_in(page, live_app.url, "alice")
    page.click(".user-menu summary")
    page.click(".user-menu >> text=Teams")
    page.wait_for_url(live_app.url + "/teams/")
    page.click(f"a[href='/teams/{team.pk}/']")
    page.wait_for_selector("[data-members]")
    links = [_invite(page, "dora@example.com"), _invite(page), _invite(page, role="manager")]
    assert len(set(links)) == 3
    assert page.locator("[data-copy-invite]").is_visible()  # teams.js loaded
    assert page.locator("[data-pending] tbody tr").count() == 3
    screenshot(page, "teams-invitations-desktop")

    for link, name in zip(links, ["dora", "emil", "fay"], strict=True):
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        guest = context.new_page()
        try:
            guest.goto(link.replace("http://127.0.0.1:8000", live_app.url))
            assert "Join research" in guest.locator("h1").inner_text()
            if name == "dora":
                assert guest.locator("#id_email").input_value() == "dora@example.com"
                assert guest.locator("#id_email").is_disabled()
            guest.fill("#id_username", name)
            guest.fill("#id_password1", NEW_PASSWORD)
            guest.fill("#id_password2", NEW_PASSWORD)
            guest.click("[data-invite-signup] button[type=submit]")
            try:
                guest.wait_for_url(f"{live_app.url}/teams/{team.pk}/", timeout=10_000)
            except Exception:
                screenshot(guest, f"debug-{name}")
                raise
            assert "You joined research" in guest.content()
        finally:
            context.close()

    page.goto(f"{live_app.url}/teams/{team.pk}/")
    for name in ("dora", "emil", "fay"):
        assert page.locator(f"[data-member='{name}']").count() == 1
    assert page.locator("[data-member='fay'] [data-role='manager']").count() == 1
    assert page.locator("[data-pending]").count() == 0  # all three used
    screenshot(page, "teams-page-desktop")

    page.locator("[data-member='emil'] button.btn-danger").click()
    page.wait_for_selector("text=emil is no longer a member of research")
    assert page.locator("[data-member='emil']").count() == 0
    assert page.console_errors == []


def test_a_link_used_once_shows_a_clear_page_the_second_time(live_app: Any, browser: Any,
                                                              page: Any, team: Group) -> None:
    sign_in(page, live_app.url, "alice")
    page.goto(f"{live_app.url}/teams/{team.pk}/")
    link = _invite(page).replace("http://127.0.0.1:8000", live_app.url)
    context = browser.new_context()
    guest = context.new_page()
    try:
        guest.goto(link)
        guest.fill("#id_username", "gus")
        guest.fill("#id_password1", NEW_PASSWORD)
        guest.fill("#id_password2", NEW_PASSWORD)
        guest.click("[data-invite-signup] button[type=submit]")
        guest.wait_for_url(f"{live_app.url}/teams/{team.pk}/")
    finally:
        context.close()
    response = page.goto(link)
    assert response.status == 410
    assert "already used" in page.locator("h1").inner_text()


def test_the_team_pages_fit_a_phone(live_app: Any, browser: Any, team: Group) -> None:
    context = browser.new_context(**PHONE)
    phone = context.new_page()
    try:
        sign_in(phone, live_app.url, "alice")
        phone.goto(f"{live_app.url}/teams/")
        _no_sideways_scroll(phone)
        screenshot(phone, "teams-list-phone")
        phone.goto(f"{live_app.url}/teams/{team.pk}/")
        link = _invite(phone, "someone.with.a.long.address@example.com")
        _no_sideways_scroll(phone)
        remove = phone.locator("[data-member='bob'] button.btn-danger")
        assert remove.is_visible()
        box = remove.bounding_box()
        assert box is not None and box["x"] + box["width"] <= 390
        screenshot(phone, "teams-page-phone")
    finally:
        context.close()
    context = browser.new_context(**PHONE)
    guest = context.new_page()
    try:
        guest.goto(link)
        assert guest.locator("#id_email").input_value() == (
            "someone.with.a.long.address@example.com")
        _no_sideways_scroll(guest)
        screenshot(guest, "teams-invite-phone")
    finally:
        context.close()


def test_the_team_page_in_chinese_and_dark_mode(live_app: Any, browser: Any,
                                                 team: Group) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="dark",
                                  locale="zh-CN", extra_http_headers={
                                      "Accept-Language": "zh-Hans"})
    page = context.new_page()
    try:
        sign_in(page, live_app.url, "bob")
        page.goto(f"{live_app.url}/teams/{team.pk}/")
        assert page.locator("#members-title").inner_text() == "成员"
        assert page.locator("[data-add-members]").count() == 0  # a member reads only
        screenshot(page, "teams-page-dark-chinese")
    finally:
        context.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.usefixtures("axe_path")  # fails, not skips, without axe-core in CI
def test_the_team_and_invite_pages_have_no_serious_accessibility_violations(
        live_app: Any, browser: Any, team: Group, scheme: str) -> None:
    found: dict[str, Any] = {}
    for device, options in {"desktop": {"viewport": {"width": 1280, "height": 800}},
                            "phone": PHONE}.items():
        # axe is injected inline, which the strict CSP refuses: bypass it for this only.
        context = browser.new_context(color_scheme=scheme, bypass_csp=True, **options)
        page = context.new_page()
        try:
            sign_in(page, live_app.url, "alice")
            page.goto(f"{live_app.url}/teams/{team.pk}/")
            link = _invite(page, "dora@example.com")
            for name, url in [("list", "/teams/"), ("team", f"/teams/{team.pk}/")]:
                page.goto(live_app.url + url)
                page.add_script_tag(path=str(AXE))
                found[f"{device} {name}"] = page.evaluate(RUN_AXE)
            context.clear_cookies()
            page.goto(link)
            page.add_script_tag(path=str(AXE))
            found[f"{device} invite"] = page.evaluate(RUN_AXE)
        finally:
            context.close()
    assert all(not v for v in found.values()), found


def test_a_superuser_creates_a_team_and_a_site_invitation(live_app: Any, page: Any,
                                                          admin_user: Any) -> None:
    seed_catalogue()
    sign_in(page, live_app.url, "root")
    page.goto(live_app.url + "/teams/")
    page.fill("#id_email", "newcomer@example.com")
    page.click("[data-invite-form] button[type=submit]")
    page.wait_for_selector("[data-invite-url]")
    assert page.locator("[data-pending] tbody tr").count() == 1
    screenshot(page, "teams-list-admin-desktop")
    page.fill("#id_name", "Design")
    page.click("[data-team-create] button[type=submit]")
    page.wait_for_selector("text=Team “Design” created")
    assert page.locator("h1").inner_text() == "Design"
    assert page.console_errors == []


def test_someone_with_an_account_signs_in_from_the_link_and_joins(
        live_app: Any, browser: Any, page: Any, team: Group, outsider: Any) -> None:
    sign_in(page, live_app.url, "alice")
    page.goto(f"{live_app.url}/teams/{team.pk}/")
    link = _invite(page, "charlie@example.com")
    context = browser.new_context()
    guest = context.new_page()
    try:
        guest.goto(link)
        guest.click("text=I already have an account: sign in")
        guest.fill("#id_username", "charlie")
        guest.fill("#id_password", PASSWORD)
        guest.locator("main button[type=submit]").click()
        guest.wait_for_url(link)
        guest.click("[data-join] button[type=submit]")
        guest.wait_for_url(f"{live_app.url}/teams/{team.pk}/")
        assert "You joined research" in guest.content()
    finally:
        context.close()
    page.reload()
    assert page.locator("[data-member='charlie']").count() == 1
