"""The management pages' tests use the API's server and tokens for the `/v1` door."""

from tests.api.conftest import (  # noqa: F401  (fixtures)
    _fast_password_hashing,
    api_server,
    make_token,
)
