"""Single sign-on with OpenID Connect (mozilla-django-oidc underneath; see docs/deployment.md).

config.py     parsing the OIDC_* environment (imported by settings: no Django models)
discovery.py  the provider's /.well-known/openid-configuration, fetched and checked
backends.py   the sign-in itself: ID token checks, account matching, team sync; the password gate
views.py      /accounts/sso/login/ and /accounts/sso/callback/, each refusal a clear page
signals.py    sso_signed_in / sso_refused (conversations records them in the audit trail)
"""
