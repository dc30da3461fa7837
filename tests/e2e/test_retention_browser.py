"""The retention policy as people meet it in Chromium against real daphne processes: an admin
sets the site's period, a team's rule and a legal hold on /manage/retention/ and runs it; an
owner sees "deleted in 3 days" in the list (desktop and phone); and, with no Redis, the server
process's own timer deletes an expired conversation while its owner looks at it.

(The warnings read the policy from the server's cache, which forgets it when the policy is
changed through the server: so the policy is set on the page here, not from the test.)"""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Group
from django.utils import timezone

from conversations.models import Conversation, Message, RetentionPolicy, TeamSettings
from conversations.retention import services
from tests.conftest import ARTIFACTS, ServerProcess, child_env, screenshot
from tests.e2e.browser import sign_in, wait_js
from tests.e2e.test_accessibility import (  # noqa: F401 (axe_path: the fixture, used by name)
    AXE,
    DEVICES,
    LANGUAGES,
    RUN_AXE,
    SCHEMES,
    _sign_in,
    axe_path,
)
from tests.retention.conftest import DAY, chat_at

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = {"width": 390, "height": 844}


def test_an_admin_sets_the_policy_places_a_hold_and_runs_it_and_owners_are_warned(
        live_app: Any, page: Any, browser: Any, owner: Any, admin_user: Any) -> None:
    team = Group.objects.create(name="research")
    old = chat_at(owner, timezone.now() - 40 * DAY, "old notes")
    soon = chat_at(owner, timezone.now() - 27 * DAY, "going soon")
    chat_at(owner, timezone.now(), "fresh")
    kept = chat_at(owner, timezone.now() - 40 * DAY, "board minutes")
    base = live_app.url
    sign_in(page, base, "root")
    page.click(".user-menu summary")
    page.get_by_role("link", name="Retention policy").click()
    page.wait_for_url(base + "/manage/retention/")

    page.fill("#id_retention_days", "30")
    page.get_by_role("button", name="Save the site's period").click()
    page.wait_for_selector("text=kept for 30 days")
    assert RetentionPolicy.objects.get(pk=1).retention_days == 30

    row = page.locator(f'[data-retention-team="{team.pk}"]')
    row.locator("select").select_option("days")
    row.locator("input[name=days]").fill("45")
    row.get_by_role("button", name="Save").click()
    page.wait_for_selector("text=only be shorter than the site")
    assert not TeamSettings.objects.filter(team=team, retention_days__isnull=False).exists()
    row = page.locator(f'[data-retention-team="{team.pk}"]')
    row.locator("input[name=days]").fill("20")
    row.get_by_role("button", name="Save").click()
    page.wait_for_selector("text=is saved")
    assert TeamSettings.objects.get(team=team).retention_days == 20

    page.fill("#id_conversation", f"{base}/c/{kept.pk}/")
    page.get_by_role("button", name="Place a legal hold").click()
    page.wait_for_selector(f'[data-held="{kept.pk}"]')
    assert page.locator('[data-count="conversations"]').inner_text() == "1"  # "old notes"
    assert page.locator('[data-count="held"]').inner_text() == "1"
    screenshot(page, "retention-desktop")

    page.get_by_role("button", name="Run now").click()  # the box is required
    assert Conversation.objects.filter(pk=old.pk).exists()
    page.check("input[name=confirm]")
    page.get_by_role("button", name="Run now").click()
    page.wait_for_selector("text=1 conversation(s) deleted")
    assert not Conversation.objects.filter(pk=old.pk).exists()
    assert Conversation.objects.filter(pk=kept.pk).exists()
    assert page.console_errors == []

    phone = browser.new_context(viewport=PHONE, is_mobile=True)
    small = phone.new_page()
    sign_in(small, base, "root")
    small.goto(base + "/manage/retention/")
    wide = small.evaluate("document.documentElement.scrollWidth")
    assert wide <= PHONE["width"], f"the page scrolls sideways on a phone ({wide}px)"
    screenshot(small, "retention-phone")
    phone.close()

    # The owner sees the coming deletion in the list, on a desktop and on a phone.
    desktop = browser.new_context(viewport={"width": 1280, "height": 800})
    alice = desktop.new_page()
    sign_in(alice, base)
    badge = alice.locator(f'[data-conversation-row="{soon.pk}"] [data-retention-badge]')
    assert "deleted in 3 days" in badge.inner_text()
    assert alice.locator("[data-retention-badge]").count() == 1
    screenshot(alice, "retention-badge-desktop")
    desktop.close()
    phone = browser.new_context(viewport=PHONE, is_mobile=True)
    small = phone.new_page()
    sign_in(small, base)
    small.click("[data-drawer-open]")
    small.wait_for_timeout(600)  # the drawer slides in
    badge = small.locator(f'[data-conversation-row="{soon.pk}"] [data-retention-badge]')
    assert badge.is_visible() and "deleted in 3 days" in badge.inner_text()
    screenshot(small, "retention-badge-phone")
    phone.close()


def test_without_redis_the_server_deletes_on_its_own_timer_while_the_owner_looks(
        django_db_blocker: Any, browser: Any, owner: Any) -> None:
    services.set_site_period(30)
    doomed = chat_at(owner, timezone.now() - 29 * DAY, "expires while open")
    with django_db_blocker.unblock():
        # Its own server without Redis (also on the PostgreSQL + Redis run): the in-process timer.
        env = child_env(RETENTION_INTERVAL_SECONDS="2", REDIS_URL="")
    server = ServerProcess(env, ARTIFACTS / "logs" / "daphne-retention-timer.log")
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        sign_in(page, server.url)
        page.goto(f"{server.url}/c/{doomed.pk}/")
        page.wait_for_timeout(3000)  # a run or two: still young enough, still there
        assert Conversation.objects.filter(pk=doomed.pk).exists()
        assert not page.evaluate("document.body.classList.contains('offline')")
        # Two days pass without a word: the next run deletes it and the open page learns.
        Conversation.objects.filter(pk=doomed.pk).update(updated_at=timezone.now() - 31 * DAY)
        Message.objects.filter(conversation=doomed).update(updated_at=timezone.now() - 31 * DAY)
        wait_js(page, "document.body.classList.contains('offline')", timeout=20)
        assert not Conversation.objects.filter(pk=doomed.pk).exists()
        context.close()
    finally:
        server.stop()


@pytest.mark.usefixtures("axe_path")
def test_the_retention_page_passes_axe_on_phone_and_desktop_light_and_dark_in_both_languages(
        live_app: Any, browser: Any, admin_user: Any, owner: Any) -> None:
    Group.objects.create(name="research")
    held = chat_at(owner, timezone.now() - 40 * DAY, "board minutes")
    services.set_legal_hold([held], True)
    cookies = _sign_in(browser, live_app.url)
    for device, options in DEVICES.items():
        for scheme in SCHEMES:
            for language in LANGUAGES:
                context = browser.new_context(color_scheme=scheme, bypass_csp=True, **options)
                context.add_cookies([*cookies, {
                    "name": settings.LANGUAGE_COOKIE_NAME, "value": language,
                    "url": live_app.url}])
                page = context.new_page()
                page.goto(live_app.url + "/manage/retention/")
                page.add_script_tag(path=str(AXE))
                found = page.evaluate(RUN_AXE)
                assert found == [], (device, scheme, language, found)
                if language == "zh-hans" and scheme == "dark":
                    screenshot(page, f"retention-{device}-dark-zh")
                context.close()
