from tests.conversations.conftest import chat_emulator, emulated  # noqa: F401  (fixtures)
