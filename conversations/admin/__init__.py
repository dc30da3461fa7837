"""The operations console, split by concern: people (users, teams), chat (conversations), usage
(budgets, ledger, reports), tokens (API tokens, share links) and the audit log.

Providers and models live in providers/admin.py. Secrets never reach a page here: API tokens
show their public prefix only (never the digest), share links a few characters of the token.
Views of our ModelAdmins run inside `audit.acting(request)`, so the changes they save are
recorded with the admin who made them. Django imports this package, which registers them all.
"""

from conversations.admin import audit, chat, people, presets, tokens, usage  # noqa: F401  (registers)
