"""A small OpenID Connect provider for the tests, run as a real process (see server.py)."""
