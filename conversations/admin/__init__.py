"""The admin, split by concern; Django imports this package to register every section."""

from conversations.admin import site  # noqa: F401  (registers the models)
