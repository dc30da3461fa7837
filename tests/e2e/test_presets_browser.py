"""Presets as people use them: a team manager publishes a "Translator" preset; a member starts
a chat from it with one click on a starter, and the first answer streams (the emulator) with the
preset's system prompt in effect. Headless Chromium against a real daphne process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Group

from conversations.models import Conversation, Preset, TeamSettings
from tests.conftest import screenshot
from tests.e2e.browser import last_answer, sign_in, wait_status

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PROMPT = "Translate everything the user writes into French."


@pytest.fixture
def team(emulated: Any, owner: Any, member: Any) -> Group:
    group = Group.objects.create(name="Linguists")
    owner.groups.add(group)
    member.groups.add(group)
    TeamSettings.objects.create(team=group).managers.add(owner)
    return group


@pytest.fixture
def second_page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.console_errors = errors
    yield page
    context.close()


def test_a_manager_publishes_a_translator_and_a_member_starts_a_chat_from_it(
        live_app: Any, emulated: Any, team: Group, page: Any, second_page: Any) -> None:
    # The manager (alice) publishes the preset to the team.
    sign_in(page, live_app.url, "alice")
    page.goto(live_app.url + "/")
    page.get_by_role("link", name="Presets", exact=True).first.click()
    page.wait_for_url("**/presets/")
    page.get_by_role("link", name="New preset").click()
    page.fill("#id_name", "Translator")
    page.fill("#id_icon", "🌐")
    page.select_option("#id_scope", f"team:{team.pk}")
    page.select_option("#id_model", "llama-3.2-3b")
    page.fill("#id_system_prompt", PROMPT)
    page.fill("#id_starters", "Translate: good morning [[emu:tokens n=40 rate=40]]\n"
                              "Translate: thank you")
    page.locator("details.params summary").click()
    page.fill("#param-temperature", "0.2")
    screenshot(page, "presets-form")
    page.get_by_role("button", name="Save preset").click()
    page.wait_for_url("**/presets/")
    assert page.locator('[data-preset="translator"]').is_visible()
    screenshot(page, "presets-list")
    preset = Preset.objects.get()
    assert (preset.scope, preset.team_id, preset.params) == ("team", team.pk,
                                                             {"temperature": 0.2})

    # A member (bob, on a phone) starts a chat from it with one click on a starter.
    member = second_page
    sign_in(member, live_app.url, "bob")
    member.locator('[data-preset-chip="translator"]').click()
    member.wait_for_url("**/?preset=translator")
    assert member.locator("[data-preset-chosen]").is_visible()
    assert member.locator("#id_model").input_value() == "llama-3.2-3b"
    screenshot(member, "presets-new-chat-phone")
    member.locator("[data-starter]").first.click()
    member.wait_for_url("**/c/**")
    wait_status(member, "complete")
    assert last_answer(member).inner_text().strip()
    screenshot(member, "presets-first-answer-phone")

    conversation = Conversation.objects.get(owner__username="bob")
    assert conversation.preset == preset and conversation.system_prompt == PROMPT
    calls = [r for r in emulated.requests if r.vendor == "cloudflare" and r.endpoint == "model"]
    assert calls[-1].json["messages"][0] == {"role": "system", "content": PROMPT}
    assert calls[-1].json["temperature"] == 0.2
    assert page.console_errors == [] and member.console_errors == []
