from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ConversationsConfig(AppConfig):
    name = "conversations"
    verbose_name = _("Conversations")

    def ready(self) -> None:
        # Django's documented place to connect receivers: models are loaded only now, and these
        # modules import them (the one function-local import the lint rule allows here).
        from conversations import audit, signals  # noqa: F401, PLC0415

        audit.connect()
