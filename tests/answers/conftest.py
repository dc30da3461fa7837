"""The answer core is reached through both doors: the chat's and the API's fixtures."""

from tests.api.conftest import (  # noqa: F401  (fixtures)
    _fast_password_hashing,
    api_server,
    make_token,
)
