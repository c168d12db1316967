"""A real OpenID Provider for the tests, built on Authlib's provider side (Flask).

Authorization code flow with PKCE (S256, required) and OpenID Connect ID tokens signed with
an RSA key published at ``/jwks``; discovery at ``/.well-known/openid-configuration``; a
login form (username + password) at ``/authorize``. Users carry a ``groups`` claim.

For the refusal tests the provider can misbehave on purpose: ``forge_audience`` puts
another client id in the ID token's ``aud``; ``forge_signature`` signs it with a key that
is not the published one.
"""
from __future__ import annotations

import hmac
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode
from authlib.oidc.core.models import AuthorizationCodeMixin
from flask import Flask, jsonify, request
from joserfc.jwk import RSAKey
from werkzeug.serving import make_server

LOGIN_FORM = """<!doctype html><html><body><h1>Example IdP</h1>
<form method="post"><label>Username <input name="username"></label>
<label>Password <input name="password" type="password"></label>
<button type="submit">Sign in at the IdP</button></form><p>{error}</p></body></html>"""


@dataclass
class Client(ClientMixin):
    client_id: str
    client_secret: str
    redirect_uris: list[str]

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope):
        return " ".join(s for s in (scope or "").split() if s in ("openid", "profile", "email", "groups"))

    def check_redirect_uri(self, redirect_uri):
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret):
        return hmac.compare_digest(client_secret or "", self.client_secret)

    def check_endpoint_auth_method(self, method, endpoint):
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type):
        return response_type == "code"

    def check_grant_type(self, grant_type):
        return grant_type == "authorization_code"


@dataclass
class Code(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope

    def get_nonce(self):
        return self.nonce

    def get_auth_time(self):
        return self.auth_time

    def get_acr(self):
        return None

    def get_amr(self):
        return None


class OpenIDProvider:
    """``with OpenIDProvider(users={"dana": ("pw", ["g1"])}) as op:`` → ``op.issuer``, ``op.add_client(...)``."""

    def __init__(self, users: dict[str, tuple[str, list[str]]]) -> None:
        self.users = users
        self.clients: dict[str, Client] = {}
        self.codes: dict[str, Code] = {}
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig", "alg": "RS256"})
        self.other_key = RSAKey.generate_key(2048, parameters={"kid": "k1", "alg": "RS256"})
        self.forge_audience = False
        self.forge_signature = False
        self.app = self._build()
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.issuer = f"http://127.0.0.1:{self.server.server_port}"

    def add_client(self, client_id: str, secret: str, redirect_uri: str) -> None:
        self.clients[client_id] = Client(client_id, secret, [redirect_uri])

    def _build(self) -> Flask:
        app = Flask("oidc-provider")
        provider = self
        server = AuthorizationServer(app, query_client=self.clients.get, save_token=lambda token, req: None)

        class CodeGrant(grants.AuthorizationCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

            def save_authorization_code(self, code, req):
                data = req.payload.data
                provider.codes[code] = Code(code, req.client.client_id, req.payload.redirect_uri, req.scope, req.user,
                                            data.get("nonce"), data.get("code_challenge"),
                                            data.get("code_challenge_method"))

            def query_authorization_code(self, code, client):
                item = provider.codes.get(code)
                return item if item is not None and item.client_id == client.client_id else None

            def delete_authorization_code(self, authorization_code):
                provider.codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code):
                return authorization_code.user

        class IdToken(OpenIDCode):
            def resolve_client_private_key(self, client):
                return provider.other_key if provider.forge_signature else provider.key

            def get_client_claims(self, client):
                aud = "someone-else" if provider.forge_audience else client.get_client_id()
                return {"iss": provider.issuer, "aud": [aud], "exp": int(time.time()) + 300}

            def get_encode_header(self, client):
                return {"alg": "RS256", "kid": "k1"}

            def exists_nonce(self, nonce, req):
                return any(c.nonce == nonce for c in provider.codes.values())

            def generate_user_info(self, user, scope):
                return UserInfo(sub=f"sub-{user}", preferred_username=user, email=f"{user}@idp.example",
                                groups=provider.users[user][1])

        server.register_grant(CodeGrant, [IdToken(require_nonce=True), CodeChallenge(required=True)])

        @app.get("/.well-known/openid-configuration")
        def discovery():
            return jsonify({
                "issuer": provider.issuer, "authorization_endpoint": f"{provider.issuer}/authorize",
                "token_endpoint": f"{provider.issuer}/token", "jwks_uri": f"{provider.issuer}/jwks",
                "response_types_supported": ["code"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"], "code_challenge_methods_supported": ["S256"],
            })

        @app.get("/jwks")
        def jwks():
            return jsonify({"keys": [provider.key.as_dict(private=False)]})

        @app.route("/authorize", methods=["GET", "POST"])
        def authorize():
            if request.method == "GET":
                server.get_consent_grant(end_user=None)  # validates client, redirect_uri, PKCE, nonce
                return LOGIN_FORM.format(error="")
            name, password = request.form.get("username", ""), request.form.get("password", "")
            if name not in provider.users or not hmac.compare_digest(provider.users[name][0], password):
                return LOGIN_FORM.format(error="wrong password"), 401
            return server.create_authorization_response(grant_user=name)

        @app.post("/token")
        def token():
            return server.create_token_response()

        return app

    def __enter__(self) -> "OpenIDProvider":
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
