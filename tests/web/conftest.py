"""The web door's tests sometimes compare with the API's: its server and tokens."""

from tests.api.conftest import api_server, make_token  # noqa: F401  (fixtures)
