"""The deployment files agree with the application and with each other.

README's configuration table is the list of settings: the environment template names every one
of them (and nothing else), and its production values are accepted by the settings module with
`check --deploy` clean. nginx upgrades websockets and allows long streams and image uploads; the
systemd units run the right commands; docker-compose.yml is valid YAML with every service;
docs/deployment.md names every file under deploy/.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ENV_EXAMPLE = DEPLOY / "llamachat.env.example"
NGINX_FILES = [DEPLOY / "nginx" / "llamachat.conf", DEPLOY / "nginx" / "compose.conf"]
UNITS = DEPLOY / "systemd"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCS = ROOT / "docs" / "deployment.md"

ASSIGNMENT = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")
SAFE_VALUE = re.compile(r"^[^\s\"'$`\\]*$")  # what systemd, compose and a shell read alike
ONE_YEAR = 31_536_000


# --------------------------------------------------------------------------- parsing helpers
def readme_variables() -> set[str]:
    """Every variable named in the first column of README's configuration table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]*)`", line.split("|")[1]))
    return names


def example_assignments() -> list[tuple[str, str, bool]]:
    """(name, value, active) for every NAME=value line, commented-out ones included."""
    entries = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = ASSIGNMENT.match(line)
        if match:
            entries.append((match[2], match[3], match[1] is None))
    return entries


def example_values() -> dict[str, str]:
    return {name: value for name, value, active in example_assignments() if active}


def without_comments(config: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in config.splitlines())


def nginx_block(config: str, header: str) -> str:
    """The body of the first `header { ... }` block, braces matched."""
    start = config.index(header + " {") + len(header) + 2
    depth, index = 1, start
    while depth:
        depth += {"{": 1, "}": -1}.get(config[index], 0)
        index += 1
    return config[start:index - 1]


def location_blocks(config: str) -> dict[str, str]:
    headers = re.findall(r"^\s*(location\s+[^{]+?)\s*\{", config, flags=re.MULTILINE)
    return {header: nginx_block(config, header) for header in headers}


def directive(body: str, name: str) -> list[str]:
    return [value.strip() for value in re.findall(rf"^\s*{name}\s+([^;]+);", body, re.MULTILINE)]


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value).groups()  # type: ignore[union-attr]
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit or "s"]


def size_bytes(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmMgG])?", value).groups()  # type: ignore[union-attr]
    return int(number) * {"k": 1024, "m": 1024**2, "g": 1024**3, "": 1}[(unit or "").lower()]


def unit_file(name: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as section -> key -> values (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def compose_services() -> dict[str, str]:
    """Each service of docker-compose.yml with the raw text of its block (no YAML needed)."""
    text = COMPOSE.read_text()
    body = text.split("\nservices:\n", 1)[1]
    body = re.split(r"^\S", body, maxsplit=1, flags=re.MULTILINE)[0]
    parts = re.split(r"^  ([a-z0-9][a-z0-9_-]*):\s*$", body, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


# --------------------------------------------------------------------------- the environment
def test_the_env_example_names_every_variable_of_the_readme_and_nothing_else() -> None:
    documented = readme_variables()
    assert len(documented) > 50, "README's configuration table was not found"
    names = [name for name, _value, _active in example_assignments()]
    assert documented - set(names) == set(), "missing from deploy/llamachat.env.example"
    assert set(names) - documented == set(), "not documented in README.md"
    active = [name for name, _value, active in example_assignments() if active]
    assert len(active) == len(set(active)), "a variable is set twice"


def test_the_env_example_sets_production_values_in_a_format_every_reader_agrees_on() -> None:
    values = example_values()
    assert values["APP_ENV"] == "production"
    assert values["DEBUG"] == "0"
    assert values["SITE_URL"].startswith("https://")
    assert values["DATABASE_URL"].startswith("postgres://")
    assert values["REDIS_URL"].startswith("redis://")
    for name in ("SECRET_KEY", "FIELD_ENCRYPTION_KEYS"):
        assert values[name].startswith("CHANGE-ME"), f"{name} must be a placeholder"
    for name, value in values.items():
        assert SAFE_VALUE.match(value), f"{name}: no quotes, spaces, $ or backslashes"
    text = ENV_EXAMPLE.read_text()
    assert "secrets.token_urlsafe" in text and "Fernet.generate_key" in text


PROBE = r"""
import json

import django

django.setup()
from django.conf import settings
from django.core.management import call_command
from django.test import Client

from chatsite import bootstrap

call_command("check", deploy=True, fail_level="WARNING")
call_command("collectstatic", interactive=False, verbosity=0)  # pages need the manifest
bootstrap._done = True  # the example's database is not reachable here, and these pages need none
host = settings.ALLOWED_HOSTS[0]
client = Client()
page = client.get("/accounts/login/", HTTP_HOST=host, HTTP_X_FORWARDED_PROTO="https")
admin = client.get("/admin/login/", HTTP_HOST=host, HTTP_X_FORWARDED_PROTO="https")
plain = client.get("/accounts/login/", HTTP_HOST=host, HTTP_X_FORWARDED_PROTO="http")
csrf = page.cookies.get(settings.CSRF_COOKIE_NAME)
print(json.dumps({
    "status": page.status_code, "admin_status": admin.status_code,
    "plain_status": plain.status_code, "plain_location": plain.get("Location", ""),
    "session_secure": settings.SESSION_COOKIE_SECURE,
    "session_httponly": settings.SESSION_COOKIE_HTTPONLY,
    "csrf_secure": settings.CSRF_COOKIE_SECURE,
    "csrf_cookie_secure": bool(csrf and csrf["secure"]),
    "hsts": page.get("Strict-Transport-Security", ""),
    "csp": page.get("Content-Security-Policy", ""),
    "admin_csp": admin.get("Content-Security-Policy", ""),
    "hosts": settings.ALLOWED_HOSTS,
}))
"""


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The settings module on the example's values (secrets generated), as a subprocess.

    Only STATIC_ROOT moves to a temporary folder: collectstatic writes there.
    """
    env = {k: v for k, v in os.environ.items()
           if k not in readme_variables() and k != "DJANGO_SETTINGS_MODULE"}
    env.update(example_values())
    env.update({"SECRET_KEY": secrets.token_urlsafe(60),
                "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
                "DJANGO_SETTINGS_MODULE": "chatsite.settings",
                "STATIC_ROOT": str(tmp_path_factory.mktemp("static"))})
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_the_env_example_is_accepted_by_the_settings_and_check_deploy_is_clean(
    production: dict[str, object]
) -> None:
    # check --deploy --fail-level WARNING ran in the probe: it raised on any warning.
    assert production["status"] == production["admin_status"] == 200
    assert production["hosts"] == [example_values()["ALLOWED_HOSTS"]]


def test_production_cookies_are_secure_and_plain_http_is_redirected(
    production: dict[str, object]
) -> None:
    assert production["session_secure"] is production["csrf_secure"] is True
    assert production["session_httponly"] is True
    assert production["csrf_cookie_secure"] is True  # on the Set-Cookie the page really sent
    assert production["plain_status"] == 301
    assert str(production["plain_location"]).startswith("https://")


def test_production_sends_a_year_of_hsts_with_preload(production: dict[str, object]) -> None:
    hsts = str(production["hsts"])
    max_age = int(re.search(r"max-age=(\d+)", hsts)[1])  # type: ignore[index]
    assert max_age >= ONE_YEAR
    assert "preload" in hsts and "includeSubDomains" in hsts


@pytest.mark.parametrize("key", ["csp", "admin_csp"])
def test_production_pages_forbid_inline_scripts(production: dict[str, object], key: str) -> None:
    policy = {part.split()[0]: part.split()[1:]
              for part in str(production[key]).split(";") if part.strip()}
    assert policy["script-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]


# --------------------------------------------------------------------------- nginx
@pytest.mark.parametrize("path", NGINX_FILES, ids=lambda p: p.name)
def test_nginx_upgrades_websockets_and_keeps_them_open_for_an_hour(path: Path) -> None:
    config = without_comments(path.read_text())
    ws = nginx_block(config, "location /ws/")
    assert directive(ws, "proxy_http_version") == ["1.1"]
    headers = dict(value.split(None, 1) for value in directive(ws, "proxy_set_header"))
    assert headers["Upgrade"] == "$http_upgrade"
    connection = headers["Connection"]
    if connection.startswith("$"):  # a map of $http_upgrade whose default is "upgrade"
        mapping = nginx_block(config, f"map $http_upgrade {connection}")
        assert directive(mapping, "default") == ["upgrade"]
    else:
        assert connection.strip('"').lower() == "upgrade"
    assert seconds(directive(ws, "proxy_read_timeout")[0]) >= 3600
    assert seconds(directive(ws, "proxy_send_timeout")[0]) >= 3600


@pytest.mark.parametrize("path", NGINX_FILES, ids=lambda p: p.name)
def test_nginx_takes_uploads_and_streams_and_passes_the_scheme_on(path: Path) -> None:
    config = without_comments(path.read_text())
    assert size_bytes(directive(config, "client_max_body_size")[0]) >= 12 * 1024**2
    api = nginx_block(config, "location /v1/")
    assert directive(api, "proxy_buffering") == ["off"]
    assert seconds(directive(api, "proxy_read_timeout")[0]) >= 3600
    assert len(directive(nginx_block(config, "upstream llamachat"), "server")) >= 2
    proxied = {h: body for h, body in location_blocks(config).items() if "proxy_pass" in body}
    assert len(proxied) >= 3
    for header, body in proxied.items():
        # proxy_set_header is not inherited by a block that sets any: each sets them all.
        headers = dict(value.split(None, 1) for value in directive(body, "proxy_set_header"))
        assert headers.get("Host") == "$host", header
        assert headers.get("X-Forwarded-Proto") == "$scheme", header
        # Overwritten, never appended: the app takes the client from it behind a trusted proxy.
        assert headers.get("X-Forwarded-For") == "$remote_addr", header


def test_nginx_serves_static_files_from_the_env_examples_static_root() -> None:
    config = without_comments(NGINX_FILES[0].read_text())
    static = nginx_block(config, "location /static/")
    assert directive(static, "alias") == [example_values()["STATIC_ROOT"].rstrip("/") + "/"]
    media = nginx_block(config, "location /media-not-served/")
    assert directive(media, "return") == ["404"]


# --------------------------------------------------------------------------- systemd
def test_the_daphne_unit_is_a_template_serving_one_port_behind_nginx() -> None:
    unit = unit_file("llamachat-daphne@.service")
    (command,) = unit["Service"]["ExecStart"]
    assert " -m daphne " in command
    assert "-b 127.0.0.1" in command and "-p %i" in command
    # No --proxy-headers: daphne would let any client choose its address (T21).
    assert "--proxy-headers" not in command and command.endswith("chatsite.asgi:application")
    ports = {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+);",
                                        NGINX_FILES[0].read_text())}
    assert ports == {8001, 8002}, "the ports of docs/deployment.md's daphne instances"


@pytest.mark.parametrize(("name", "words"), [
    ("llamachat-daphne@.service", ["-m daphne"]),
    ("llamachat-worker.service", ["-m celery -A chatsite worker"]),
    ("llamachat-beat.service", ["-m celery -A chatsite beat", "--schedule=/srv/llamachat/var/"]),
])
def test_every_unit_runs_its_command_from_the_checkout_with_the_env_file(
    name: str, words: list[str]
) -> None:
    unit = unit_file(name)
    service = unit["Service"]
    (command,) = service["ExecStart"]
    for word in words:
        assert word in command
    assert command.startswith("/srv/llamachat/venv/bin/python -m ")
    assert service["WorkingDirectory"] == ["/srv/llamachat/app"]
    assert service["EnvironmentFile"][0] == "/etc/llamachat/llamachat.env"
    assert service["User"] == ["llamachat"]
    assert service["Restart"] == ["always"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    # The only writable place (ProtectSystem=strict) holds uploads and the beat schedule.
    (writable,) = service["ReadWritePaths"]
    assert example_values()["MEDIA_ROOT"].startswith(writable + "/")


# --------------------------------------------------------------------------- containers
def test_docker_compose_is_valid_yaml_with_every_service() -> None:
    text = COMPOSE.read_text()
    assert "\t" not in text
    try:
        import yaml  # PyYAML, when the virtualenv has it
    except ImportError:
        yaml = None
    if yaml is not None:
        parsed = yaml.safe_load(text)
        assert set(parsed["services"]) == set(compose_services())
    services = compose_services()
    assert set(services) == {"web1", "web2", "worker", "beat", "postgres", "redis", "nginx"}
    first = services["web1"]
    assert first.index("migrate --noinput") < first.index("sync_providers") < first.index(
        "daphne")
    assert "daphne" in services["web2"] and "--proxy-headers" not in services["web2"]
    assert '"worker"' in services["worker"] and '"beat"' in services["beat"]
    assert "noeviction" in services["redis"]
    assert "./nginx/compose.conf:" in services["nginx"]
    assert "dockerfile: deploy/Dockerfile" in text


def test_the_dockerfile_builds_from_files_that_exist() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "\nFROM python:3.11-slim\n" in dockerfile
    assert "pip install ." in dockerfile
    assert "collectstatic" in dockerfile and "compile_translations" in dockerfile
    for line in re.findall(r"^COPY (.+)$", dockerfile, flags=re.MULTILINE):
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), source


# --------------------------------------------------------------------------- scripts and docs
@pytest.mark.parametrize("name", ["backup.sh", "llamachat-manage"])
def test_the_scripts_are_executable_bash(name: str) -> None:
    path = DEPLOY / name
    assert os.access(path, os.X_OK)
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_backup_dumps_the_database_and_media_and_rotates() -> None:
    script = (DEPLOY / "backup.sh").read_text()
    assert "pg_dump --format=custom" in script
    assert "tar --create --gzip" in script
    assert "-mtime +" in script and "-delete" in script


def test_the_deployment_guide_names_every_deploy_file_and_only_existing_ones() -> None:
    guide = DOCS.read_text()
    files = {p.relative_to(ROOT).as_posix() for p in DEPLOY.rglob("*") if p.is_file()}
    assert {f for f in files if f not in guide} == set()
    mentioned = set(re.findall(r"\bdeploy/[\w@./-]*\w", guide))
    assert {m for m in mentioned if not (ROOT / m).exists()} == set()
    for topic in ("max_connections", "noeviction", "rotate_keys", "/healthz", "journalctl",
                  "pg_restore", "migrate", "createsuperuser", "certbot"):
        assert topic in guide, topic
