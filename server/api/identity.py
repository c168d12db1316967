"""Sign-in settings an admin edits (``/api/v1/settings/...``): the MFA policy, LDAP and OpenID Connect."""
from __future__ import annotations

from flask import jsonify

from server.api import api_bp, json_body, me
from server.api.openapi import describe, register_schema
from server.core import audit, db
from server.core.errors import ValidationError
from server.core.models import ROLES
from server.guards import requires
from server.people import identity_settings, ldap, mfa, oidc


@api_bp.get("/settings/mfa")
@describe(response="MfaPolicy")
@requires("users.manage")
def get_mfa_policy():
    """The roles that must use a second factor, and how fresh it must be for sensitive actions."""
    return jsonify(mfa.policy(db.session()))


@api_bp.put("/settings/mfa")
@describe(request="MfaPolicy", response="MfaPolicy")
@requires("users.manage")
def put_mfa_policy():
    """Replace the MFA policy (admins)."""
    s = db.session()
    value = identity_settings.save(s, "mfa", json_body(), mfa.clean_policy, actor=me().username)
    s.commit()
    return jsonify(value)


register_schema("MfaPolicy", {"type": "object", "additionalProperties": False, "properties": {
    "required_roles": {"type": "array", "items": {"type": "string", "enum": list(ROLES)},
                       "description": "default: admin, approver"},
    "reauth_minutes": {"type": "integer", "minimum": 1, "maximum": 1440},
    "grace_days": {"type": "integer", "minimum": 0, "maximum": 90,
                   "description": "days a new account of a required role may sign in before enrolling"}}})


@api_bp.get("/settings/ldap")
@describe(response="LdapSettings")
@requires("users.manage")
def get_ldap_settings():
    """LDAP / Active Directory sign-in settings (the bind password is a vault credential, named here)."""
    return jsonify(ldap.public(ldap.settings(db.session())))


@api_bp.put("/settings/ldap")
@describe(request="LdapSettings", response="LdapSettings")
@requires("users.manage")
def put_ldap_settings():
    """Replace the LDAP settings (admins); an empty ``url`` turns LDAP sign-in off."""
    s = db.session()
    value = identity_settings.save(s, "ldap", json_body(), ldap.clean, actor=me().username)
    s.commit()
    return jsonify(ldap.public(value))


@api_bp.post("/settings/ldap/test")
@describe(request="LdapTest", response="LdapTestResult")
@requires("users.manage")
def test_ldap_settings():
    """Look a user up as a sign-in would: the DN found, the groups (nested ones too), the mapped role."""
    username = json_body().get("username")
    if not isinstance(username, str) or not username.strip():
        raise ValidationError("'username' is required", field="username")
    s = db.session()
    result = ldap.test_user(s, username.strip())
    audit.record(s, "settings.ldap_test", actor=me().username, username=username.strip(), ok=result["ok"])
    s.commit()
    return jsonify(result)


_TEXT = identity_settings.TEXT_SCHEMA


def _text(description: str = "", **extra) -> dict:
    return {**_TEXT, **({"description": description} if description else {}), **extra}


def _wholes(module, **descriptions: str) -> dict[str, dict]:
    """The whole-number fields of a settings module, bounded as its ``clean`` bounds them."""
    return {name: identity_settings.whole_schema(low, high, **({"description": descriptions[name]}
                                                               if name in descriptions else {}))
            for name, low, high in module.WHOLE_FIELDS}


# Directory groups are any non-blank name; roles and policy names as stored.
_GROUP_ROLES = {"type": ["object", "null"], "propertyNames": {"pattern": "\\S"},
                "additionalProperties": {"type": "string", "enum": list(ROLES)}}
_GROUP_POLICIES = {"type": ["object", "null"], "additionalProperties": {"type": "array", "items": {"type": "string"}},
                   "description": "directory group -> names of stored policies"}
register_schema("LdapSettings", {"type": "object", "additionalProperties": False, "properties": {
    "url": _text("ldaps://host[:port], or ldap://host[:port] with start_tls"),
    "start_tls": {"type": "boolean"}, "ca_bundle": _text("PEM file of trusted CAs"),
    "tls_verify": {"type": "boolean", "default": True},
    "bind_dn": _text(), "bind_credential": _text("a 'password' credential"),
    "user_dn_template": _text("direct bind without a service account: uid={username},…"),
    "user_base": _text(), "user_filter": _text(default="(uid={username})"),
    "group_base": _text(), "group_filter": _text("with {dn}; on AD (member:1.2.840.113556.1.4.1941:={dn}) for "
                                                 "nested groups"),
    "group_roles": _GROUP_ROLES, "group_policies": _GROUP_POLICIES,
    **_wholes(ldap, recheck_s="how often an LDAP user in use is looked up again"),
    }})
register_schema("LdapTest", {"type": "object", "required": ["username"],
                             "properties": {"username": {"type": "string"}}})
register_schema("LdapTestResult", {"type": "object", "properties": {
    "ok": {"type": "boolean"}, "dn": {"type": "string"}, "groups": {"type": "array", "items": {"type": "string"}},
    "role": {"type": ["string", "null"]}, "policies": {"type": "array", "items": {"type": "string"}},
    "disabled": {"type": "boolean"}, "message": {"type": "string"}}})


@api_bp.get("/settings/oidc")
@describe(response="OidcSettings")
@requires("users.manage")
def get_oidc_settings():
    """OpenID Connect sign-in settings (the client secret is a vault credential, named here)."""
    return jsonify(oidc.public(oidc.settings(db.session())))


@api_bp.put("/settings/oidc")
@describe(request="OidcSettings", response="OidcSettings")
@requires("users.manage")
def put_oidc_settings():
    """Replace the OIDC settings (admins); an empty ``issuer`` turns OIDC sign-in off."""
    s = db.session()
    value = identity_settings.save(s, "oidc", json_body(), oidc.clean, actor=me().username)
    s.commit()
    return jsonify(oidc.public(value))


register_schema("OidcSettings", {"type": "object", "additionalProperties": False, "properties": {
    "issuer": _text("discovery at <issuer>/.well-known/openid-configuration"),
    "client_id": _text(),
    "client_credential": _text("a 'password' or 'token' credential: the client secret"),
    "groups_claim": _text(default="groups"),
    "username_claim": _text(default="preferred_username"),
    "scopes": _text(default="openid profile email"),
    "group_roles": _GROUP_ROLES, "group_policies": _GROUP_POLICIES,
    **_wholes(oidc, max_token_age_s="API tokens and sessions of an OIDC user work this long after his last "
                                    "sign-in through the provider"),
    }})
