from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils.translation import gettext as _


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
    }


def site(request: HttpRequest) -> dict[str, Any]:
    return {"ALLOW_SIGNUP": settings.ALLOW_SIGNUP, "SITE_NAME": "Llama Chat",
            "js_strings": js_strings}
