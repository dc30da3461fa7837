"""Accessibility, measured: axe-core runs on every page a person meets (chat, streaming,
settings, API tokens, a share page, error pages (404, expired form, 500), sign-in, the admin),
in light and dark, on a desktop and a phone, in English and Chinese, and finds no serious or
critical violation.

axe-core comes from the npm registry (package.json pins it; `make test` runs `npm ci`). It is
injected with Playwright's add_script_tag, which inlines the file: the strict CSP would refuse
it, so the contexts here bypass the CSP (for this injection only; the other browser tests run
with it).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import RequestFactory
from django.utils import translation

from chatsite import error_pages
from conversations.models import Conversation, Message, MessageStatus
from conversations.sharing import links
from tests.conftest import PASSWORD, REQUIRE_BROWSER, ROOT
from tests.support import model, wait_final

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
DEVICES = {"desktop": {"viewport": {"width": 1280, "height": 800}},
           "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True,
                     "has_touch": True}}
SCHEMES = ("light", "dark")
LANGUAGES = ("en", "zh-hans")
ANSWER = """Llamas **hum** to each other, and *alpacas* too.

| animal | sound |
|---|---|
| llama | hum |

```python
print("hello llama")
```

Read more in `docs/llamas.md`."""

# Only the violations that matter here; axe's other rules still run.
RUN_AXE = """async () => {
  const result = await axe.run(document, {resultTypes: ["violations"]});
  return result.violations
    .filter((v) => v.impact === "serious" || v.impact === "critical")
    .map((v) => ({id: v.id, impact: v.impact, help: v.help,
                  nodes: v.nodes.slice(0, 4).map((n) => ({
                    target: n.target.join(" "),
                    summary: (n.failureSummary || "").replace(/\\s+/g, " ").slice(0, 240)}))}));
}"""


@pytest.fixture
def axe_path() -> Iterator[Path]:
    if not AXE.exists():
        message = "axe-core is not installed: run `npm ci` (make test does)"
        if REQUIRE_BROWSER:
            pytest.fail(message)
        pytest.skip(message)
    yield AXE


def _chat(user: Any, title: str, turns: int = 2) -> Conversation:
    llama = model("llama-3.2-3b")
    conversation = Conversation.objects.create(owner=user, model=llama, title=title)
    parent = None
    for n in range(turns):
        prompt = Message.objects.create(
            conversation=conversation, parent=parent, seq=2 * n + 1, role=Message.Role.USER,
            author=user, client_id=uuid.uuid4(), content=f"Tell me about llamas ({n})",
            status=MessageStatus.COMPLETE)
        parent = Message.objects.create(
            conversation=conversation, parent=prompt, seq=2 * n + 2,
            role=Message.Role.ASSISTANT, model=llama, content=ANSWER,
            status=MessageStatus.COMPLETE, finish_reason="stop", prompt_tokens=12,
            completion_tokens=40)
    conversation.active_leaf = parent
    conversation.next_seq = 2 * turns + 1
    conversation.save()
    return conversation


def _sign_in(browser: Any, base: str) -> list[dict[str, Any]]:
    context = browser.new_context()
    page = context.new_page()
    page.goto(base + "/accounts/login/")
    page.fill("#id_username", "root")
    page.fill("#id_password", PASSWORD)
    page.locator("main button[type=submit]").click()
    page.wait_for_url(base + "/")
    cookies = [c for c in context.cookies() if c["name"] != settings.LANGUAGE_COOKIE_NAME]
    context.close()
    return cookies


def _start_a_long_answer(browser: Any, base: str, cookies: list[dict[str, Any]],
                         conversation: Conversation) -> Message:
    context = browser.new_context()
    context.add_cookies(cookies)
    page = context.new_page()
    page.goto(f"{base}/c/{conversation.pk}/")
    # 1024 tokens (the default output cap) at 4 a second outlast the test (over 4 minutes, also
    # on a loaded machine); it stops them.
    page.fill("#composer-text", "A very long story [[emu:tokens n=1024 rate=4]]")
    page.keyboard.press("Enter")
    deadline = time.monotonic() + 20
    answer = None
    while time.monotonic() < deadline:
        answer = Message.objects.filter(conversation=conversation, role=Message.Role.ASSISTANT,
                                        status=MessageStatus.STREAMING).first()
        if answer is not None:
            break
        page.wait_for_timeout(100)
    assert answer is not None, "the long answer did not start"
    context.close()
    return answer


# The 500 page cannot be caused on purpose in a healthy server: the test renders it with the
# real handler and serves it from the server's origin (so its stylesheets load) at this path.
SERVER_ERROR = "/__server-error-page__/"


def _server_error(language: str) -> str:
    with translation.override(language):
        response = error_pages.server_error(RequestFactory().get("/"))
    return response.content.decode()


def _serve(html: str, status: int) -> Any:
    def handler(route: Any) -> None:
        route.fulfill(status=status, body=html, content_type="text/html; charset=utf-8")
    return handler


def _report(found: dict[str, list[dict[str, Any]]]) -> str:
    lines = []
    for where, violations in found.items():
        for v in violations:
            lines.append(f"\n[{where}] {v['impact'].upper()} {v['id']}: {v['help']}")
            for node in v["nodes"]:
                lines.append(f"    at {node['target']}\n      {node['summary']}")
    return "\n".join(lines)


@pytest.mark.timeout(400)  # every page, both themes and languages: a minute here, two on CI
def test_no_serious_or_critical_violation_on_any_page(
        live_app: Any, emulated: Any, browser: Any, admin_user: Any, axe_path: Path) -> None:
    started = time.monotonic()
    base = live_app.url
    finished = _chat(admin_user, "Llamas, finished")
    streaming = _chat(admin_user, "Llamas, streaming", turns=1)
    share = links.create_share(admin_user, finished)
    cookies = _sign_in(browser, base)
    live = _start_a_long_answer(browser, base, cookies, streaming)
    pages = {
        "new chat": "/",
        "conversation": f"/c/{finished.pk}/",
        "streaming": f"/c/{streaming.pk}/",
        "settings": f"/c/{finished.pk}/settings/",
        "API tokens": "/account/tokens/",
        "presets": "/presets/",
        "preset form": "/presets/new/",
        "share page": f"/s/{share.token}/",
        "not found": f"/c/{uuid.uuid4()}/",
        "admin index": "/admin/",
        "admin user form": f"/admin/auth/user/{admin_user.pk}/change/",
    }
    found: dict[str, list[dict[str, Any]]] = {}
    runs = 0
    try:
        for device, options in DEVICES.items():
            for scheme in SCHEMES:
                for language in LANGUAGES:
                    combination = f"{device}, {scheme}, {language}"
                    context = browser.new_context(color_scheme=scheme, bypass_csp=True,
                                                  **options)
                    context.add_cookies([{"name": settings.LANGUAGE_COOKIE_NAME,
                                          "value": language, "url": base}])
                    page = context.new_page()
                    page.route(base + SERVER_ERROR, _serve(_server_error(language), 500))
                    visits = [("sign-in", "/accounts/login/"), ("form expired", None),
                              ("server error", SERVER_ERROR), *pages.items()]
                    for name, path in visits:
                        if name == "new chat":  # signed in from here on
                            context.add_cookies(cookies)
                        if path is None:  # the sign-in form sent without its CSRF token
                            page.fill("#id_username", "root")
                            page.fill("#id_password", "not the password")
                            page.evaluate("document.querySelector("
                                          "'main input[name=csrfmiddlewaretoken]').remove()")
                            with page.expect_navigation():
                                page.locator("main button[type=submit]").click()
                            assert page.locator("h1").inner_text() in {
                                "This form has expired", "表单已过期"}
                        else:
                            page.goto(base + path)
                        assert page.evaluate("document.documentElement.lang") == language
                        if name == "streaming":
                            assert page.locator(
                                '.msg-assistant:last-of-type[data-status="streaming"]'
                            ).count() == 1, "the answer should still be streaming"
                        page.add_script_tag(path=str(axe_path))
                        violations = page.evaluate(RUN_AXE)
                        runs += 1
                        if violations:
                            found[f"{name} ({path}) — {combination}"] = violations
                    context.close()
    finally:
        Message.objects.filter(pk=live.pk).update(stop_requested=True)
        wait_final(live.pk, timeout=10)
    elapsed = time.monotonic() - started
    print(f"\naxe-core ran on {runs} pages in {elapsed:.1f}s")
    assert not found, "axe-core found serious or critical violations:" + _report(found)


ADMIN_PAGES = [
    "/admin/auth/user/", "/admin/auth/user/add/", "/admin/auth/group/add/",
    "/admin/providers/provider/", "/admin/providers/modelconfig/",
    "/admin/conversations/conversation/", "/admin/conversations/budget/add/",
    "/admin/conversations/usagerecord/", "/admin/conversations/apitoken/",
    "/admin/conversations/sharelink/", "/admin/conversations/auditevent/",
    "/admin/reports/usage/", "/admin/password_change/",
    "/accounts/password/",  # not the admin's, but the same kind of form page
]


def test_the_rest_of_the_admin_has_no_serious_or_critical_violation(
        live_app: Any, emulated: Any, browser: Any, admin_user: Any, axe_path: Path) -> None:
    """Lists, add forms and the report: the stock admin's other page kinds, in the two
    combinations furthest apart (desktop light English, phone dark Chinese)."""
    base = live_app.url
    conversation = _chat(admin_user, "Llamas in the admin")
    links.create_share(admin_user, conversation)
    provider = model("llama-3.2-3b").provider
    pages = [*ADMIN_PAGES, f"/admin/providers/provider/{provider.pk}/change/"]
    cookies = _sign_in(browser, base)
    found: dict[str, list[dict[str, Any]]] = {}
    for device, scheme, language in (("desktop", "light", "en"), ("phone", "dark", "zh-hans")):
        context = browser.new_context(color_scheme=scheme, bypass_csp=True, **DEVICES[device])
        context.add_cookies([{"name": settings.LANGUAGE_COOKIE_NAME, "value": language,
                              "url": base}])
        page = context.new_page()
        for path in ["/admin/login/", *pages]:
            if path == pages[0]:  # signed in from here on
                context.add_cookies(cookies)
            response = page.goto(base + path)
            assert response is not None and response.status == 200, path
            page.add_script_tag(path=str(axe_path))
            violations = page.evaluate(RUN_AXE)
            if violations:
                found[f"{path} — {device}, {scheme}, {language}"] = violations
        context.close()
    assert not found, "axe-core found serious or critical violations:" + _report(found)
