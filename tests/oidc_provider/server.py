"""A real OpenID Connect provider for the tests: a process of its own on a port of its own.

http.server + PyJWT + cryptography (RS256, a key made at start). It serves:

  GET  /.well-known/openid-configuration   discovery
  GET  /jwks                                the public key (kid "test-key")
  GET  /authorize                           a login form (username + password)
  POST /authorize                           checks them, redirects back with ?code=&state=
  POST /token                               client_secret_basic or client_secret_post; PKCE S256;
                                            codes live 60 s and work once (invalid_grant after)
  GET  /userinfo                            the claims, for a Bearer access token

and, for the tests only, named fault switches and people (JSON bodies):

  POST /_test/reset    {"users": {...}}  faults off, codes forgotten, these people
  POST /_test/faults   {"wrong_issuer": true, "claims": {"email": "x@y"}, ...}
  GET  /_test/stats    {"token_requests": n, "codes_issued": n}

Faults: wrong_issuer, discovery_wrong_issuer, bad_signature (signed by another key under the
same kid), unsigned (alg "none"), hs256_client_secret (HMAC with the client secret),
expired_id_token, expired_code, reused_code (every code counts as already used), wrong_nonce,
wrong_audience, unverified_email, claims (merged into every person's claims).

Run: python -m tests.oidc_provider.server --port 9300 --client-id app --client-secret s3cret
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

KID = "test-key"
CODE_TTL_SECONDS = 60


class State:
    def __init__(self, issuer: str, client_id: str, client_secret: str) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self.client_secret = client_secret
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.lock = threading.Lock()
        # One person until a test says otherwise (for trying the site by hand).
        self.users: dict[str, dict[str, Any]] = {"demo": {
            "password": "demo-password", "email": "demo@example.com", "email_verified": True,
            "name": "Demo Person", "groups": ["eng"]}}
        self.faults: dict[str, Any] = {}
        self.codes: dict[str, dict[str, Any]] = {}
        self.access_tokens: dict[str, dict[str, Any]] = {}
        self.stats = {"token_requests": 0, "codes_issued": 0}

    def reset(self, users: dict[str, dict[str, Any]]) -> None:
        with self.lock:
            self.users = users
            self.faults = {}
            self.codes.clear()
            self.access_tokens.clear()
            self.stats = {"token_requests": 0, "codes_issued": 0}

    def claims_of(self, username: str) -> dict[str, Any]:
        person = self.users[username]
        claims = {key: value for key, value in person.items() if key != "password"}
        claims.setdefault("sub", "sub-" + username)
        claims.setdefault("preferred_username", username)
        if self.faults.get("unverified_email"):
            claims["email_verified"] = False
        claims.update(self.faults.get("claims") or {})
        return claims


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Handler(BaseHTTPRequestHandler):
    state: State  # set on the class by serve()
    server_version = "TestOIDC/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    # --- plumbing ---------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", headers)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self._body().decode()).items()}

    # --- routes -----------------------------------------------------------------------------
    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        routes = {"/.well-known/openid-configuration": self.discovery, "/jwks": self.jwks,
                  "/authorize": lambda: self.authorize_form(query), "/userinfo": self.userinfo,
                  "/_test/stats": lambda: self._json(200, self.state.stats)}
        route = routes.get(parts.path)
        if route is None:
            self._json(404, {"error": "not_found"})
            return
        route()

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path == "/authorize":
            self.authorize_submit(self._form())
        elif path == "/token":
            self.token(self._form())
        elif path == "/_test/reset":
            self.state.reset(json.loads(self._body() or b"{}").get("users", {}))
            self._json(200, {"ok": True})
        elif path == "/_test/faults":
            with self.state.lock:
                self.state.faults.update(json.loads(self._body() or b"{}"))
            self._json(200, {"ok": True})
        else:
            self._json(404, {"error": "not_found"})

    def discovery(self) -> None:
        issuer = self.state.issuer
        wrong = self.state.faults.get("discovery_wrong_issuer")
        named = "https://evil.example" if wrong else issuer
        self._json(200, {
            "issuer": named,
            "authorization_endpoint": issuer + "/authorize",
            "token_endpoint": issuer + "/token",
            "userinfo_endpoint": issuer + "/userinfo",
            "jwks_uri": issuer + "/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic",
                                                      "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "email", "profile"],
        })

    def jwks(self) -> None:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.state.key.public_key(), as_dict=True)
        jwk.update({"kid": KID, "alg": "RS256", "use": "sig"})
        self._json(200, {"keys": [jwk]})

    def authorize_form(self, query: dict[str, str], error: str = "") -> None:
        if query.get("client_id") != self.state.client_id or not query.get("redirect_uri") \
                or query.get("response_type") != "code":
            self._send(400, b"<h1>Bad authorization request</h1>", "text/html")
            return
        hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                         for k, v in query.items() if k not in {"username", "password"})
        alert = f'<p role="alert" id="idp-error">{html.escape(error)}</p>' if error else ""
        page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Test identity provider</title></head><body><main>
<h1>Test identity provider</h1>{alert}
<form method="post" action="/authorize">{hidden}
<label>Username <input name="username" id="idp-username" autocomplete="username"></label>
<label>Password <input name="password" id="idp-password" type="password"></label>
<button type="submit" id="idp-submit">Sign in</button></form></main></body></html>"""
        self._send(401 if error else 200, page.encode(), "text/html; charset=utf-8")

    def authorize_submit(self, form: dict[str, str]) -> None:
        username, password = form.get("username", ""), form.get("password", "")
        person = self.state.users.get(username)
        if person is None or not secrets.compare_digest(str(person.get("password")), password):
            self.authorize_form(form, "Wrong username or password.")
            return
        if form.get("client_id") != self.state.client_id:
            self._send(400, b"<h1>Unknown client</h1>", "text/html")
            return
        code = secrets.token_urlsafe(24)
        with self.state.lock:
            self.state.codes[code] = {
                "username": username, "redirect_uri": form.get("redirect_uri", ""),
                "nonce": form.get("nonce"), "challenge": form.get("code_challenge"),
                "method": form.get("code_challenge_method"), "issued": time.time(),
                "used": bool(self.state.faults.get("reused_code"))}
            self.state.stats["codes_issued"] += 1
        back = {"code": code, "state": form.get("state", "")}
        self._send(302, b"", "text/plain",
                   {"Location": form["redirect_uri"] + "?" + urlencode(back)})

    def _client_ok(self, form: dict[str, str]) -> bool:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                raw = base64.b64decode(auth[6:]).decode()
            except ValueError:
                return False
            client_id, _, secret = raw.partition(":")
            client_id, secret = unquote(client_id), unquote(secret)
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        return client_id == self.state.client_id and secrets.compare_digest(
            secret, self.state.client_secret)

    def token(self, form: dict[str, str]) -> None:
        state = self.state
        with state.lock:
            state.stats["token_requests"] += 1
        if not self._client_ok(form):
            self._json(401, {"error": "invalid_client"}, {"WWW-Authenticate": "Basic"})
            return
        if form.get("grant_type") != "authorization_code":
            self._json(400, {"error": "unsupported_grant_type"})
            return
        with state.lock:
            entry = state.codes.get(form.get("code", ""))
            if entry is None or entry["used"]:
                self._json(400, {"error": "invalid_grant"})
                return
            entry["used"] = True  # once only, whatever follows
        ttl = -1 if state.faults.get("expired_code") else CODE_TTL_SECONDS
        if time.time() - entry["issued"] > ttl:
            self._json(400, {"error": "invalid_grant", "error_description": "code expired"})
            return
        if form.get("redirect_uri") != entry["redirect_uri"]:
            self._json(400, {"error": "invalid_grant", "error_description": "redirect_uri"})
            return
        if entry["challenge"]:
            verifier = form.get("code_verifier", "")
            if _b64url(hashlib.sha256(verifier.encode()).digest()) != entry["challenge"]:
                self._json(400, {"error": "invalid_grant", "error_description": "pkce"})
                return
        claims = state.claims_of(entry["username"])
        now = int(time.time())
        id_claims = {**claims, "iss": state.issuer, "aud": state.client_id, "iat": now,
                     "exp": now + 300, "auth_time": now}
        if entry["nonce"]:
            id_claims["nonce"] = entry["nonce"]
        faults = state.faults
        if faults.get("wrong_issuer"):
            id_claims["iss"] = "https://evil.example"
        if faults.get("wrong_audience"):
            id_claims["aud"] = "someone-else"
        if faults.get("wrong_nonce"):
            id_claims["nonce"] = "not-the-nonce-you-sent"
        if faults.get("expired_id_token"):
            id_claims["iat"], id_claims["exp"] = now - 900, now - 600
        key = state.other_key if faults.get("bad_signature") else state.key
        if faults.get("unsigned"):
            id_token = jwt.encode(id_claims, None, algorithm="none")
        elif faults.get("hs256_client_secret"):  # the old alg-confusion trick
            id_token = jwt.encode(id_claims, state.client_secret, algorithm="HS256",
                                  headers={"kid": KID})
        else:
            id_token = jwt.encode(id_claims, key, algorithm="RS256", headers={"kid": KID})
        access_token = secrets.token_urlsafe(24)
        with state.lock:
            state.access_tokens[access_token] = claims
        self._json(200, {"access_token": access_token, "token_type": "Bearer",
                         "expires_in": 300, "id_token": id_token})

    def userinfo(self) -> None:
        auth = self.headers.get("Authorization", "")
        claims = self.state.access_tokens.get(auth[7:]) if auth.startswith("Bearer ") else None
        if claims is None:
            self._json(401, {"error": "invalid_token"}, {"WWW-Authenticate": "Bearer"})
            return
        self._json(200, claims)


def serve(port: int, client_id: str, client_secret: str) -> None:
    issuer = f"http://127.0.0.1:{port}"
    Handler.state = State(issuer, client_id, client_secret)
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"test OpenID Connect provider on {issuer}", flush=True)
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", default="llamachat")
    parser.add_argument("--client-secret", default="test-client-secret")
    args = parser.parse_args()
    serve(args.port, args.client_id, args.client_secret)


if __name__ == "__main__":
    main()
