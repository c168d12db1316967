"""OpenID Connect sign-in (authorization code flow with PKCE), with Authlib and joserfc.

Settings (``identity_settings`` ``oidc``, admins, UI or API): ``issuer`` (its
``/.well-known/openid-configuration`` is read, and must name the same issuer),
``client_id``, ``client_credential`` (a ``password`` or ``token`` credential holding the
client secret, in the vault), ``groups_claim``, ``username_claim``, and the mapping
(``group_roles``, ``group_policies``). ``max_token_age_s``: an OIDC user's API tokens and
sessions keep working that long after his last sign-in through the provider (there is no
back channel to ask whether he still exists), then he must sign in again.

What is checked: ``state`` (against the value kept in the signed session cookie; one use),
PKCE (S256), the ID token's signature (the provider's JWKS), issuer, audience (our
client id), expiry, and ``nonce``.
"""
from __future__ import annotations

import hmac
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.core.errors import Unauthorized, ValidationError
from server.core.models import Credential, User, utcnow
from server.core.vault import vault
from server.people import identity_settings, mapping

DEFAULTS: dict[str, Any] = {
    "issuer": "", "client_id": "", "client_credential": "", "groups_claim": "groups",
    "username_claim": "preferred_username", "scopes": "openid profile email", "group_roles": {},
    "group_policies": {}, "max_token_age_s": 8 * 3600, "timeout_s": 10,
}
PENDING_S = 600
ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]


class OidcError(Unauthorized):
    code = "oidc_failed"


def settings(session: Session) -> dict[str, Any]:
    return identity_settings.load(session, "oidc", DEFAULTS)


def configured(session: Session) -> bool:
    cfg = settings(session)
    return bool(cfg["issuer"] and cfg["client_id"])


def public(data: dict[str, Any]) -> dict[str, Any]:
    return {k: data.get(k, v) for k, v in DEFAULTS.items()}


WHOLE_FIELDS = (("max_token_age_s", 300, 30 * 86400), ("timeout_s", 1, 60))  # name, lowest, highest


def clean(session: Session, data: Any) -> dict[str, Any]:
    data = identity_settings.fields(data, DEFAULTS)
    out: dict[str, Any] = {}
    for name in ("issuer", "client_id", "client_credential", "groups_claim", "username_claim", "scopes"):
        out[name] = identity_settings.text(data, DEFAULTS, name)
    for name, low, high in WHOLE_FIELDS:
        out[name] = identity_settings.whole(data, DEFAULTS, name, low, high)
    if out["issuer"]:
        parsed = urlparse(out["issuer"])
        if parsed.scheme not in ("https", "http") or not parsed.hostname:
            raise ValidationError("'issuer' must be an https:// URL", field="issuer")
        if parsed.scheme == "http" and parsed.hostname not in ("localhost", "127.0.0.1", "::1") \
                and not parsed.hostname.startswith("127."):
            raise ValidationError("'issuer' must use https (http only on loopback, for testing)", field="issuer")
        if not out["client_id"]:
            raise ValidationError("'client_id' is required", field="client_id")
        if "openid" not in out["scopes"].split():
            raise ValidationError("'scopes' must include openid", field="scopes")
    if out["client_credential"]:
        identity_settings.secret_credential(session, out["client_credential"], "client_credential",
                                            ("password", "token"))
    out["group_roles"] = mapping.clean_group_roles(data.get("group_roles"))
    out["group_policies"] = mapping.clean_group_policies(session, data.get("group_policies"))
    return out


def _metadata(cfg: dict[str, Any]) -> dict[str, Any]:
    url = cfg["issuer"].rstrip("/") + "/.well-known/openid-configuration"
    try:
        resp = requests.get(url, timeout=cfg["timeout_s"])
        resp.raise_for_status()
        meta = resp.json()
    except (requests.RequestException, ValueError) as exc:
        raise OidcError(f"the OpenID provider cannot be reached ({url}: {type(exc).__name__})") from exc
    if meta.get("issuer") != cfg["issuer"]:
        raise OidcError("the provider's discovery document names another issuer")
    return meta


def _client(session: Session, cfg: dict[str, Any], redirect_uri: str) -> OAuth2Session:
    secret = None
    if cfg["client_credential"]:
        cred = session.execute(select(Credential).where(Credential.name == cfg["client_credential"])).scalar_one()
        secret = vault().decrypt(cred.secret_enc)
    return OAuth2Session(cfg["client_id"], secret, scope=cfg["scopes"], redirect_uri=redirect_uri,
                         code_challenge_method="S256")


def begin(session: Session, redirect_uri: str) -> tuple[str, dict[str, Any]]:
    """(URL to send the browser to, what to keep in the signed session until the callback)."""
    cfg = settings(session)
    meta = _metadata(cfg)
    state, nonce, verifier = generate_token(32), generate_token(32), generate_token(64)
    url, _ = _client(session, cfg, redirect_uri).create_authorization_url(
        meta["authorization_endpoint"], state=state, nonce=nonce, code_verifier=verifier)
    return url, {"state": state, "nonce": nonce, "verifier": verifier, "at": time.time()}


def finish(session: Session, args: dict[str, str], pending: dict[str, Any] | None, redirect_uri: str) -> User:
    """Check the callback and the ID token, then map the user's groups (see module doc)."""
    if args.get("error"):
        raise OidcError(f"the provider refused the sign-in: {args.get('error')}")
    if not pending or time.time() - pending.get("at", 0) > PENDING_S:
        raise OidcError("no sign-in in progress here (or it took too long): start again")
    if not hmac.compare_digest(str(args.get("state", "")), str(pending["state"])):
        raise OidcError("the sign-in answer does not match this browser's request (state)")
    cfg = settings(session)
    meta = _metadata(cfg)
    try:
        token = _client(session, cfg, redirect_uri).fetch_token(
            meta["token_endpoint"], code=args.get("code", ""), code_verifier=pending["verifier"],
            grant_type="authorization_code", timeout=cfg["timeout_s"])
    except Exception as exc:  # noqa: BLE001 - authlib raises several kinds; all mean "no token"
        raise OidcError(f"the provider did not exchange the code ({type(exc).__name__})") from exc
    claims = verify_id_token(token.get("id_token"), meta, cfg, pending["nonce"])
    username = claims.get(cfg["username_claim"]) or claims["sub"]
    groups = claims.get(cfg["groups_claim"]) or []
    if isinstance(groups, str):
        groups = [groups]
    if not isinstance(username, str) or not isinstance(groups, list):
        raise OidcError("the ID token's username or groups claim is malformed")
    return mapping.apply(session, source="oidc", username=username[:80],
                         external_id=f"{cfg['issuer']}|{claims['sub']}", groups=[str(g) for g in groups],
                         settings=cfg, email=claims.get("email") if isinstance(claims.get("email"), str) else None)


def verify_id_token(id_token: Any, meta: dict[str, Any], cfg: dict[str, Any], nonce: str) -> dict[str, Any]:
    if not isinstance(id_token, str):
        raise OidcError("the provider sent no ID token")
    try:
        keys = KeySet.import_key_set(requests.get(meta["jwks_uri"], timeout=cfg["timeout_s"]).json())
        decoded = jwt.decode(id_token, keys, algorithms=ALGORITHMS)
        jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": cfg["issuer"]}, aud={"essential": True, "value": cfg["client_id"]},
            sub={"essential": True}, exp={"essential": True}, nonce={"essential": True, "value": nonce},
            leeway=60,
        ).validate(decoded.claims)
    except (JoseError, ValueError, KeyError, requests.RequestException) as exc:
        raise OidcError(f"the ID token was refused: {type(exc).__name__}: {exc}") from exc
    return decoded.claims


def still_valid(session: Session, user: User) -> bool:
    """OIDC accounts: valid ``max_token_age_s`` after the last sign-in through the provider."""
    last = user.directory_checked_at
    return last is not None and utcnow() - last < timedelta(seconds=settings(session)["max_token_age_s"])
