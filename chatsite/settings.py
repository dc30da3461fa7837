"""Settings: everything comes from the environment (see README "Configuration").

Two modes:
- embedded (default): SQLite file, in-memory channel layer, in-process jobs; secrets are
  generated once into `var/local-secrets.json` (git-ignored).
- production (`APP_ENV=production`): SECRET_KEY, FIELD_ENCRYPTION_KEYS, ALLOWED_HOSTS and
  SITE_URL are required; cookies are secure, HSTS and HTTPS redirect are on.
"""

from __future__ import annotations

import os
from datetime import timedelta
from ipaddress import ip_network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

from chatsite.env import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_str,
    env_url,
    local_secrets,
    parse_fernet_keys,
)
from chatsite.oidc.config import parse_domains, parse_issuer, parse_team_map

ENV = os.environ
BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str(ENV, "VAR_DIR", str(BASE_DIR / "var")))

APP_ENV = env_str(ENV, "APP_ENV", "embedded").lower()
if APP_ENV not in {"embedded", "production"}:
    raise ImproperlyConfigured("APP_ENV must be 'embedded' or 'production'.")
PRODUCTION = APP_ENV == "production"

DEBUG = env_bool(ENV, "DEBUG", False)

# --- secrets ------------------------------------------------------------------------------
_secret_key = env_str(ENV, "SECRET_KEY")
_fernet_raw = env_str(ENV, "FIELD_ENCRYPTION_KEYS")
if PRODUCTION:
    if len(_secret_key) < 50:
        raise ImproperlyConfigured("SECRET_KEY is required in production (50+ random characters).")
    if not _fernet_raw:
        raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS is required in production.")
elif not _secret_key or not _fernet_raw:
    _local = local_secrets(VAR_DIR / "local-secrets.json")
    _secret_key = _secret_key or _local["SECRET_KEY"]
    _fernet_raw = _fernet_raw or _local["FIELD_ENCRYPTION_KEYS"]
SECRET_KEY = _secret_key
FIELD_ENCRYPTION_KEYS = parse_fernet_keys(_fernet_raw)

# --- hosts and URLs -------------------------------------------------------------------------
SITE_URL = env_url(ENV, "SITE_URL", "" if PRODUCTION else "http://127.0.0.1:8000",
                   schemes=("http", "https"))
if PRODUCTION and not SITE_URL:
    raise ImproperlyConfigured("SITE_URL is required in production (e.g. https://chat.example.com).")
_site_host = urlsplit(SITE_URL).hostname or ""
ALLOWED_HOSTS = env_list(
    ENV, "ALLOWED_HOSTS", [_site_host] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]"]
)
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS is required in production.")
CSRF_TRUSTED_ORIGINS = env_list(ENV, "CSRF_TRUSTED_ORIGINS", [])
for _origin in CSRF_TRUSTED_ORIGINS:
    if "://" not in _origin:
        raise ImproperlyConfigured("CSRF_TRUSTED_ORIGINS entries need a scheme (https://host).")


def _origin_of(url: str, host: str | None = None) -> str:
    parts = urlsplit(url)
    name = host or parts.hostname or ""
    name = f"[{name}]" if ":" in name else name
    return f"{parts.scheme}://{name}" + (f":{parts.port}" if parts.port else "")


# Websockets (threat T19): the browser's Origin must be our own, scheme, host and port alike:
# SITE_URL's origin and CSRF_TRUSTED_ORIGINS. Outside production a loopback SITE_URL also
# allows its other loopback names (the same scheme and port): 127.0.0.1, localhost, [::1].
WEBSOCKET_ALLOWED_ORIGINS = [_origin_of(SITE_URL), *CSRF_TRUSTED_ORIGINS] if SITE_URL else [
    *CSRF_TRUSTED_ORIGINS]
if SITE_URL and not PRODUCTION and _site_host in {"127.0.0.1", "localhost", "::1"}:
    WEBSOCKET_ALLOWED_ORIGINS += [_origin_of(SITE_URL, name)
                                  for name in ("127.0.0.1", "localhost", "::1")]

# --- applications ---------------------------------------------------------------------------
INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "channels",
    "chatsite",
    "providers",
    "conversations",
    "axes",
]

MIDDLEWARE = [
    "chatsite.middleware.ClientAddressMiddleware",  # first: the address everything else sees
    "django.middleware.security.SecurityMiddleware",
    "chatsite.middleware.ContentSecurityPolicyMiddleware",
    "chatsite.middleware.StaticFilesMiddleware",  # WhiteNoise, without two thread hops
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "chatsite.middleware.FirstAdminMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a lockout into the 429 page
]

ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.i18n",
                "chatsite.context_processors.site",
            ],
        },
    },
]

# --- database -------------------------------------------------------------------------------
DATABASE_URL = env_str(ENV, "DATABASE_URL")
if DATABASE_URL:
    try:
        _db = dj_database_url.parse(DATABASE_URL)
    except (ValueError, KeyError) as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is malformed: {type(exc).__name__}.") from None
    if _db["ENGINE"] not in {"django.db.backends.postgresql", "django.db.backends.sqlite3"}:
        raise ImproperlyConfigured("DATABASE_URL must be a postgres:// or sqlite:/// URL.")
else:
    _db = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(VAR_DIR / "db.sqlite3")}

if _db["ENGINE"] == "django.db.backends.postgresql":
    # Under ASGI every request may run on another thread: persistent connections leak, so
    # use psycopg's pool and close connections after each request instead.
    _db["CONN_MAX_AGE"] = 0
    _db["OPTIONS"] = {
        "pool": {
            "min_size": env_int(ENV, "DB_POOL_MIN", 2, minimum=0),
            "max_size": env_int(ENV, "DB_POOL_MAX", 20, minimum=1),
            "timeout": env_float(ENV, "DB_POOL_TIMEOUT", 10.0),
        }
    }
else:
    # Django's SQLite backend, with one process's writers queued on a lock rather than on
    # SQLite's sleeping busy handler (chatsite/sqlite3/base.py).
    _db["ENGINE"] = "chatsite.sqlite3"
    _db["OPTIONS"] = {
        # IMMEDIATE takes the write lock at BEGIN, so concurrent writers queue on
        # busy_timeout instead of failing with "database is locked" mid-transaction.
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file (not :memory:) so server and worker processes started by tests share it; one per
    # test run so parallel runs on one machine do not delete each other's database.
    _db["TEST"] = {"NAME": str(VAR_DIR / f"test-db-{os.getpid()}.sqlite3")}
    Path(_db["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # Opening a SQLite connection registers ~30 functions and runs the PRAGMAs: keep each
    # thread's connection (the runner's pool threads live as long as the process). A request
    # thread that ends drops its connection with it; health checks replace a broken one.
    _db["CONN_MAX_AGE"] = 300
    _db["CONN_HEALTH_CHECKS"] = True
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: channel layer, cache, Celery ------------------------------------------------------
REDIS_URL = env_url(ENV, "REDIS_URL", schemes=("redis", "rediss", "unix"))
if REDIS_URL:
    # Every in-flight Redis call holds a connection; redis-py 8's pools refuse the 101st with
    # MaxConnectionsError (seen at 200 streams). Redis itself allows 10,000 clients.
    _redis_host = {"address": REDIS_URL, "socket_connect_timeout": 5,
                   "max_connections": env_int(ENV, "REDIS_MAX_CONNECTIONS", 1000, minimum=10)}
    CHANNEL_LAYER = env_choice(ENV, "CHANNEL_LAYER", ("pubsub", "core"), "pubsub")
    if CHANNEL_LAYER == "pubsub":
        # Redis pub/sub: no per-channel lists and no expiry sweeps; a message published while
        # nobody listens is gone (viewers resync from the runner's snapshot).
        CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                                      "CONFIG": {"hosts": [_redis_host]}}}
    else:
        CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {
                    # channels_redis blocks 5 s per read waiting for messages; redis-py 8 also
                    # times sockets out at 5 s by default, which broke idle readers.
                    "hosts": [{**_redis_host, "socket_timeout": 30}],
                    "capacity": env_int(ENV, "CHANNEL_CAPACITY", 500, minimum=10),
                    "expiry": 30,
                },
            }
        }
    CACHES: dict[str, dict[str, Any]] = {
        "default": {
            # Django's, with one connection pool per process (chatsite/cache.py).
            "BACKEND": "chatsite.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "llamachat",
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "chatsite.layers.RateLimitedCleanupLayer",
            "CONFIG": {"capacity": env_int(ENV, "CHANNEL_CAPACITY", 500, minimum=10)},
        }
    }
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                          "OPTIONS": {"MAX_ENTRIES": 2000}}}

CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = REDIS_URL or "cache+memory://"
# Without Redis there is no worker: jobs run in the calling process.
CELERY_TASK_ALWAYS_EAGER = not REDIS_URL
# The queue answers and maintenance go to (and `make worker` reads): one per site when several
# sites share a Redis, or per blue/green deployment.
CELERY_TASK_DEFAULT_QUEUE = env_str(ENV, "CELERY_QUEUE", "celery")
CELERY_BEAT_SCHEDULE = {
    "reap-stale-generations": {"task": "conversations.reap_stale_generations",
                               "schedule": 30.0},
    "cleanup-images": {
        "task": "conversations.cleanup_images",
        "schedule": float(env_int(ENV, "CLEANUP_INTERVAL_SECONDS", 3600, minimum=60)),
    },
    # The retention policy (conversations/retention/); without Redis, the server's timer.
    "apply-retention": {
        "task": "conversations.apply_retention",
        "schedule": float(env_int(ENV, "RETENTION_INTERVAL_SECONDS", 3600, minimum=1)),
    },
}
RETENTION_INTERVAL_SECONDS = env_int(ENV, "RETENTION_INTERVAL_SECONDS", 3600, minimum=1)
JOBS_IN_PROCESS = not REDIS_URL

# --- auth -----------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
ALLOW_SIGNUP = env_bool(ENV, "ALLOW_SIGNUP", False)

# Single sign-on with OpenID Connect (chatsite/oidc/, docs/deployment.md). On when the issuer and
# the client id are set; endpoints and keys come from the issuer's discovery document.
OIDC_ISSUER = parse_issuer(ENV)
OIDC_CLIENT_ID = env_str(ENV, "OIDC_CLIENT_ID")
OIDC_CLIENT_SECRET = env_str(ENV, "OIDC_CLIENT_SECRET")
OIDC_ENABLED = bool(OIDC_ISSUER and OIDC_CLIENT_ID)
OIDC_BUTTON_LABEL = env_str(ENV, "OIDC_BUTTON_LABEL")
OIDC_ALLOWED_DOMAINS = parse_domains(ENV)
OIDC_TEAMS_CLAIM = env_str(ENV, "OIDC_TEAMS_CLAIM")
OIDC_TEAM_MAP = parse_team_map(ENV)
OIDC_ONLY = env_bool(ENV, "OIDC_ONLY", False)
if OIDC_ONLY and not OIDC_ENABLED:
    raise ImproperlyConfigured("OIDC_ONLY needs OIDC_ISSUER and OIDC_CLIENT_ID.")
if OIDC_ONLY:
    ALLOW_SIGNUP = False  # accounts come from the identity provider
# mozilla-django-oidc's own settings (it reads them by these names)
OIDC_RP_CLIENT_ID = OIDC_CLIENT_ID
OIDC_RP_CLIENT_SECRET = OIDC_CLIENT_SECRET
OIDC_RP_SIGN_ALGO = "RS256"
OIDC_RP_SCOPES = "openid email profile"
OIDC_USE_NONCE = True
OIDC_USE_PKCE = True
OIDC_TIMEOUT = 10
OIDC_MAX_STATES = 10
OIDC_TOKEN_USE_BASIC_AUTH = True  # client_secret_basic, the spec's default
OIDC_AUTHENTICATION_CALLBACK_URL = "oidc_callback"

# Login throttling (threat T21) with django-axes, for /accounts/login/ and /admin/login/ alike.
# The standalone backend only refuses locked-out attempts; ModelBackend checks the password.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "chatsite.auth.UsernameLockoutBackend",
    "chatsite.oidc.backends.PasswordGateBackend",  # OIDC_ONLY: passwords for superusers only
    "django.contrib.auth.backends.ModelBackend",
    "chatsite.oidc.backends.OIDCBackend",  # signs in only from /accounts/sso/callback/
]
AXES_FAILURE_LIMIT = env_int(ENV, "LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int(ENV, "LOGIN_COOLOFF_MINUTES", 15, minimum=1))
# One lock per (username, address): a guesser elsewhere cannot lock a user out, and unknown
# usernames are counted like known ones, so a lockout tells nothing about who exists. The
# address is REMOTE_ADDR (axes' default); behind a reverse proxy that is the proxy's, so the lock
# is then per username. There is no address-only lock: axes applies one failure limit to every
# parameter set, so a lock per address at this limit would shut a whole office (or, behind a
# proxy, everyone) out after a few typos. Spraying many usernames from one address is left to
# the reverse proxy's request rate limit on the two login URLs.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
# And per username from any address, after more failures (an attacker rotating addresses):
# chatsite.auth.UsernameLockoutBackend.
LOGIN_USERNAME_FAILURE_LIMIT = env_int(ENV, "LOGIN_USERNAME_FAILURE_LIMIT",
                                       4 * AXES_FAILURE_LIMIT, minimum=1)
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"  # answered with HTTP 429

# --- i18n -----------------------------------------------------------------------------------
LANGUAGE_CODE = env_str(ENV, "LANGUAGE_CODE", "en")
LANGUAGES = [("en", _("English")), ("zh-hans", _("Simplified Chinese"))]
if LANGUAGE_CODE not in {code for code, _name in LANGUAGES}:
    raise ImproperlyConfigured("LANGUAGE_CODE must be one of: en, zh-hans.")
TIME_ZONE = env_str(ENV, "TIME_ZONE", "UTC")
try:
    import zoneinfo

    zoneinfo.ZoneInfo(TIME_ZONE)
except (zoneinfo.ZoneInfoNotFoundError, ValueError):
    raise ImproperlyConfigured(f"TIME_ZONE {TIME_ZONE!r} is not a known time zone.") from None
USE_I18N = True
USE_TZ = True
LOCALE_PATHS = [BASE_DIR / "locale"]

# --- static and media -----------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = Path(env_str(ENV, "STATIC_ROOT", str(VAR_DIR / "static")))
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_ROOT = Path(env_str(ENV, "MEDIA_ROOT", str(VAR_DIR / "media")))
MEDIA_URL = "/media-not-served/"  # uploads are only served through access-checked views
S3_BUCKET = env_str(ENV, "S3_BUCKET")
_default_storage: dict[str, object] = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
if S3_BUCKET:
    # S3-compatible storage through django-storages (pip install ".[s3]"); see README.
    _default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": S3_BUCKET,
            "endpoint_url": env_str(ENV, "S3_ENDPOINT_URL") or None,
            "region_name": env_str(ENV, "S3_REGION") or None,
            "access_key": env_str(ENV, "S3_ACCESS_KEY_ID") or None,
            "secret_key": env_str(ENV, "S3_SECRET_ACCESS_KEY") or None,
            "default_acl": "private",
            "querystring_auth": True,
            "file_overwrite": False,
        },
    }
STORAGES = {
    "default": _default_storage,
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not PRODUCTION
DATA_UPLOAD_MAX_NUMBER_FILES = 20
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440

# --- security -------------------------------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Django's database sessions, with their per-request read compiled (chatsite/sessions.py).
SESSION_ENGINE = "chatsite.sessions"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
CSRF_FAILURE_VIEW = "chatsite.error_pages.csrf_failure"  # the layout, both languages, JSON
_secure_default = PRODUCTION
SESSION_COOKIE_SECURE = env_bool(ENV, "SECURE_COOKIES", _secure_default)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_SSL_REDIRECT = env_bool(ENV, "SECURE_SSL_REDIRECT", _secure_default)
SECURE_HSTS_SECONDS = env_int(ENV, "SECURE_HSTS_SECONDS", 31_536_000 if PRODUCTION else 0,
                              minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = env_bool(ENV, "SECURE_HSTS_PRELOAD", PRODUCTION)
# Turning preload off is a legitimate choice (preload is hard to undo); do not warn about it.
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD or not PRODUCTION else ["security.W021"]
BEHIND_PROXY = env_bool(ENV, "BEHIND_PROXY", PRODUCTION)
if BEHIND_PROXY:
    # The reverse proxy (nginx, see docs/deployment.md) terminates TLS.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Addresses (or networks) of the reverse proxies whose X-Forwarded-For is believed; every other
# peer is the client itself (chatsite.middleware.ClientAddressMiddleware). Empty outside
# production; in production the proxy on the same host.
TRUSTED_PROXIES = env_list(ENV, "TRUSTED_PROXIES",
                           ["127.0.0.1", "::1"] if PRODUCTION else [])
for _proxy in TRUSTED_PROXIES:
    try:
        ip_network(_proxy.strip(), strict=False)
    except ValueError:
        raise ImproperlyConfigured(
            f"TRUSTED_PROXIES: {_proxy!r} is not an IP address or network.") from None
# The middleware has already put the client's address in REMOTE_ADDR: never read a header.
AXES_IPWARE_META_PRECEDENCE_ORDER = ["REMOTE_ADDR"]

# --- logging --------------------------------------------------------------------------------
LOG_LEVEL = env_str(ENV, "LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
    raise ImproperlyConfigured("LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": "chatsite.logging.RedactSecretsFilter"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact"]}
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # httpx logs full request URLs at INFO; Qianfan carries its token in the query.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        # django-axes announces itself at INFO in every process (manage.py commands, each
        # server) and logs each successful sign-in's cleanup; its warnings (lockouts) stay.
        "axes": {"level": "WARNING"},
    },
}

# --- product limits -------------------------------------------------------------------------
PROVIDER_CONNECT_TIMEOUT = env_float(ENV, "PROVIDER_CONNECT_TIMEOUT", 10.0)
PROVIDER_READ_TIMEOUT = env_float(ENV, "PROVIDER_READ_TIMEOUT", 60.0)
PROVIDER_EXTRA_HOSTS = env_list(ENV, "PROVIDER_EXTRA_HOSTS", [])
MAX_PROMPT_CHARS = env_int(ENV, "MAX_PROMPT_CHARS", 32_000, minimum=100)
RATE_LIMIT_PER_MINUTE = env_int(ENV, "RATE_LIMIT_PER_MINUTE", 20, minimum=1)
MAX_CONCURRENT_ANSWERS = env_int(ENV, "MAX_CONCURRENT_ANSWERS", 3, minimum=1)
# A model names each new conversation after its first answer (conversations/answers/titles.py);
# off: the cleaned first line of the first prompt stays, and no title calls are made.
GENERATED_TITLES = env_bool(ENV, "GENERATED_TITLES", True)
ALLOW_ANONYMOUS_SHARES = env_bool(ENV, "ALLOW_ANONYMOUS_SHARES", False)
STREAM_COALESCE_MS = env_int(ENV, "STREAM_COALESCE_MS", 100, minimum=0)
# Websockets compress their frames (permessage-deflate, RFC 7692) when the client offers it, as
# every browser does: a rendered block repeats the text its deltas just carried
# (chatsite/daphne_tuning.py).
WEBSOCKET_COMPRESSION = env_bool(ENV, "WEBSOCKET_COMPRESSION", True)
# Writers beat at least every third of this while waiting for a first token.
GENERATION_STALE_SECONDS = env_int(ENV, "GENERATION_STALE_SECONDS", 45, minimum=5)
# How often each server process looks for answers whose process went away (from its start on,
# whether or not anyone visits); Celery beat does the same every 30 s with Redis.
REAPER_INTERVAL_SECONDS = env_int(ENV, "REAPER_INTERVAL_SECONDS", 15, minimum=1)
# On SIGTERM (a deploy), how long a server process or worker lets the answers it writes finish
# before it saves the rest as interrupted and exits (conversations/answers/drain.py).
DRAIN_SECONDS = env_int(ENV, "DRAIN_SECONDS", 60, minimum=0)
IMAGE_MAX_BYTES = env_int(ENV, "IMAGE_MAX_BYTES", 10 * 1024 * 1024, minimum=1024)
IMAGE_MAX_PIXELS = env_int(ENV, "IMAGE_MAX_PIXELS", 40_000_000, minimum=10_000)
DOCUMENT_MAX_BYTES = env_int(ENV, "DOCUMENT_MAX_BYTES", 10 * 1024 * 1024, minimum=1024)
DOCUMENT_MAX_PAGES = env_int(ENV, "DOCUMENT_MAX_PAGES", 500, minimum=1)
IMAGE_URL_TTL_SECONDS = env_int(ENV, "IMAGE_URL_TTL_SECONDS", 600, minimum=30)
UPLOAD_GRACE_HOURS = env_int(ENV, "UPLOAD_GRACE_HOURS", 24, minimum=1)
IMAGE_RETENTION_DAYS = env_int(ENV, "IMAGE_RETENTION_DAYS", 0, minimum=0)  # 0: keep forever
CLEANUP_INTERVAL_SECONDS = env_int(ENV, "CLEANUP_INTERVAL_SECONDS", 3600, minimum=60)
