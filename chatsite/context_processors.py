from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils.translation import gettext as _

from chatsite.oidc.views import button_label as sso_button_label


def js_strings() -> dict[str, str]:
    """Texts the page scripts show, translated on the server (read by static/js/i18n.js)."""
    return {
        "copy": _("Copy"), "copied": _("Copied"),
        "reconnecting": _("Reconnecting…"), "signed_out": _("Signed out."),
        "no_access": _("You no longer have access to this conversation."),
        "gone": _("This conversation is no longer available to you."),
        "text_only": _("%(model)s reads text only: images are not sent to it."),
        "needs_image": _("%(model)s needs an image in the conversation: attach one to your "
                         "message."),
        "up_to": _("Up to %(n)s image(s) per message."),
        "no_images": _("%(model)s does not take images."),
        "max_images": _("%(model)s takes at most %(n)s image(s) per message."),
        "remove_images": _("%(model)s does not take images. Remove them first."),
        "wait_upload": _("Wait for the upload to finish."),
        "upload_failed": _("The upload failed. Check your connection."),
        "refused": _("This image was refused."),
        "accepts_images": _("This model accepts images."),
        "text_only_short": _("Text only: this model does not take images."),
        "remove_image": _("Remove image"),
        # the chat page's live announcements and keyboard shortcuts (static/js/shortcuts.js)
        "answer_started": _("Writing an answer…"), "answer_finished": _("The answer is finished."),
        "answer_stopped": _("The answer was stopped."),
        "answer_failed": _("The answer failed."),
        "answer_interrupted": _("The answer was interrupted."),
        "answer_copied": _("The last answer was copied."),
        "copy_failed": _("Copying failed."),
        "shortcuts_title": _("Keyboard shortcuts"), "close": _("Close"), "or": _("or"),
        "shortcut_new_chat": _("New chat"), "shortcut_focus": _("Go to the message box"),
        "shortcut_stop": _("Stop the answer being written"),
        "shortcut_copy": _("Copy the last answer"), "shortcut_help": _("Show these shortcuts"),
    }


def site(request: HttpRequest) -> dict[str, Any]:
    return {"ALLOW_SIGNUP": settings.ALLOW_SIGNUP, "SITE_NAME": "Llama Chat",
            "js_strings": js_strings,
            # single sign-on (chatsite/oidc/): the login page's button and SSO-only mode
            "OIDC_ENABLED": settings.OIDC_ENABLED, "OIDC_ONLY": settings.OIDC_ONLY,
            "OIDC_BUTTON_LABEL": sso_button_label}
