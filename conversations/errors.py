"""The one refusal type of the product's use cases.

Every service, rule and limit refuses with a `ServiceError` (or a subclass): a stable `code`
for programs, a `message` a user can read, the HTTP `status` a door should answer with, and,
for limits that reset, `retry_after` seconds. Nothing was changed when one is raised. The web
pages show the message; `/v1` wraps the same code in OpenAI's error shape.

A failed answer is stored with its code and an English text; `answer_error_text` draws it in
the reader's language.
"""

from __future__ import annotations

from django.conf import settings
from django.utils import translation
from django.utils.translation import gettext, gettext_noop


class ServiceError(Exception):
    """A refusal with a user-facing message; nothing was changed."""

    def __init__(self, code: str, message: str, status: int = 400, *,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after


# --- what a reader of a failed answer sees ---------------------------------------------------
# An answer that failed keeps its `error_code` and the English text made when it failed. The
# page draws the text in the reader's language from the code (`answer_error_text`); the stored
# English stays the fallback for what has no translation (a vendor's own words).
# These are msgids: gettext_noop marks them for `make messages`, gettext translates them when a
# page is drawn.
PROVIDER_FAILURES: dict[str, str] = {
    "auth": gettext_noop(
        "The provider refused our credentials. An administrator has to fix the key."),
    "quota_exhausted": gettext_noop(
        "The provider's quota is used up. It resets later; try another model meanwhile."),
    "rate_limited": gettext_noop("The provider is rate limiting us. Retry in a moment."),
    "unavailable": gettext_noop("The provider is unavailable right now. Retry in a moment."),
    "timeout": gettext_noop("The provider stopped sending. Retry in a moment."),
    "bad_request": gettext_noop("The provider refused this request."),
    "content_filtered": gettext_noop("The provider's content filter stopped this answer."),
    "truncated": gettext_noop(
        "The answer was cut off before it ended. Retry to get a full answer."),
}
UNREADABLE_KEY = gettext_noop("The provider's stored key cannot be decrypted. An administrator "
                              "has to enter it again.")
NOT_CONFIGURED = gettext_noop("The provider is not configured.")
INTERNAL = gettext_noop("Something went wrong on our side. Retry.")
INTERRUPTED = gettext_noop("The server restarted while this answer was written.")
REAPED = gettext_noop("This answer stopped: the process writing it went away.")
NOT_PREPARED = gettext_noop("This answer could not be prepared. Retry.")

# Our own codes: a generic text when the stored one (with its numbers) has no translation.
GENERIC: dict[str, str] = {
    **PROVIDER_FAILURES,
    "internal": INTERNAL,
    "interrupted": INTERRUPTED,
    "image_required": gettext_noop(
        "This model needs an image in the conversation: attach one to your message."),
    "context_length_exceeded": gettext_noop(
        "This message is too long for the model. Shorten it or choose a model with a larger "
        "context."),
}
# Stored texts made from a template with the model's name, by code.
WITH_MODEL: dict[str, tuple[str, ...]] = {
    "image_required": (
        gettext_noop("%(model)s needs an image in the conversation, and none is stored any "
                     "more: attach an image again."),
        gettext_noop("%(model)s needs an image in the conversation: attach one to your "
                     "message."),
    ),
}


def answer_error_text(code: str, stored: str, *, model: str = "") -> str:
    """A stored answer error in the active language: the stored text's own translation, a
    template of the code filled again, or the code's generic text; the stored English text
    when nothing fits (for a vendor's detail it follows the generic text)."""
    if not code and not stored:
        return ""
    language = translation.get_language() or settings.LANGUAGE_CODE
    if language.split("-")[0] == "en":
        return stored or (gettext(GENERIC[code]) if code in GENERIC else "")
    if stored:
        own = gettext(stored)
        if own != stored:
            return own
        for template in WITH_MODEL.get(code, ()):
            if model and template % {"model": model} == stored:
                return gettext(template) % {"model": model}
    generic = GENERIC.get(code)
    if generic is None:
        return stored
    text = gettext(generic)
    if code in PROVIDER_FAILURES and stored and stored != generic:
        # The vendor's own words say more than the generic text: keep them, untranslated.
        return f"{text} ({stored})"
    return text
