"""The admin's sign-in settings page: MFA policy, LDAP / Active Directory (with the "test"
button) and OpenID Connect, on the same services as ``/api/v1/settings/...``."""
from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from server.core import audit, db
from server.core.errors import ApiError, ValidationError
from server.core.models import ROLES
from server.guards import requires
from server.people import identity_settings, ldap, mfa, oidc
from server.web import web_bp

_LDAP_TEXT = ("url", "ca_bundle", "bind_dn", "bind_credential", "user_dn_template", "user_base", "user_filter",
              "group_base", "group_filter")
_OIDC_TEXT = ("issuer", "client_id", "client_credential", "groups_claim", "username_claim", "scopes")


def mapping_text(roles: dict[str, str], policies: dict[str, list[str]]) -> tuple[str, str]:
    return ("\n".join(f"{g} = {r}" for g, r in roles.items()),
            "\n".join(f"{g} = {', '.join(p)}" for g, p in policies.items()))


def parse_lines(text: str, field: str, *, many: bool) -> dict[str, Any]:
    """``group = value`` per line (the group may hold '=' itself: the last one splits)."""
    out: dict[str, Any] = {}
    for number, line in enumerate((text or "").splitlines(), 1):
        if not line.strip():
            continue
        group, sep, value = line.rpartition("=")
        if not sep or not group.strip() or not value.strip():
            raise ValidationError(f"'{field}' line {number}: write 'group = {'policy, …' if many else 'role'}'",
                                  field=field)
        out[group.strip()] = [v.strip() for v in value.split(",") if v.strip()] if many else value.strip()
    return out


def _int(name: str, default: int) -> int:
    raw = request.form.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise ValidationError(f"'{name}' must be a whole number", field=name)
    return int(raw)


def _page(status: int = 200, error: str | None = None, test: dict[str, Any] | None = None):
    s = db.session()
    ldap_cfg, oidc_cfg = ldap.public(ldap.settings(s)), oidc.public(oidc.settings(s))
    return render_template("admin/sign_in.html", roles=ROLES, policy=mfa.policy(s), ldap=ldap_cfg, oidc=oidc_cfg,
                           ldap_map=mapping_text(ldap_cfg["group_roles"], ldap_cfg["group_policies"]),
                           oidc_map=mapping_text(oidc_cfg["group_roles"], oidc_cfg["group_policies"]),
                           error=error, test=test), status


def _save(name: str, data_of, clean) -> Any:
    s = db.session()
    try:
        identity_settings.save(s, name, data_of(), clean, actor=current_user.username)
        s.commit()
    except ApiError as err:
        s.rollback()
        return _page(err.status, err.message)
    flash("Sign-in settings saved.", "success")
    return redirect(url_for("web.sign_in_settings"))


@web_bp.get("/admin/sign-in")
@login_required
@requires("users.manage")
def sign_in_settings():
    return _page()


@web_bp.post("/admin/sign-in/mfa")
@login_required
@requires("users.manage")
def sign_in_settings_mfa():
    return _save("mfa", lambda: {"required_roles": request.form.getlist("required_roles"),
                                 "reauth_minutes": _int("reauth_minutes", mfa.DEFAULT_REAUTH_MINUTES),
                                 "grace_days": _int("grace_days", mfa.DEFAULT_GRACE_DAYS)},
                 mfa.clean_policy)


@web_bp.post("/admin/sign-in/ldap")
@login_required
@requires("users.manage")
def sign_in_settings_ldap():
    def data() -> dict[str, Any]:
        out: dict[str, Any] = {k: request.form.get(k, "") for k in _LDAP_TEXT}
        out["start_tls"] = request.form.get("start_tls") == "on"
        out["tls_verify"] = request.form.get("tls_verify") == "on"
        out["recheck_s"] = _int("recheck_s", ldap.DEFAULTS["recheck_s"])
        out["group_roles"] = parse_lines(request.form.get("group_roles", ""), "group_roles", many=False)
        out["group_policies"] = parse_lines(request.form.get("group_policies", ""), "group_policies", many=True)
        return out
    return _save("ldap", data, ldap.clean)


@web_bp.post("/admin/sign-in/ldap/test")
@login_required
@requires("users.manage")
def sign_in_settings_ldap_test():
    username = request.form.get("username", "").strip()
    if not username:
        return _page(422, "enter a username to look up")
    s = db.session()
    try:
        result = ldap.test_user(s, username)
    except ApiError as err:
        return _page(err.status, err.message)
    audit.record(s, "settings.ldap_test", actor=current_user.username, username=username, ok=result["ok"])
    s.commit()
    return _page(test={"username": username, **result})


@web_bp.post("/admin/sign-in/oidc")
@login_required
@requires("users.manage")
def sign_in_settings_oidc():
    def data() -> dict[str, Any]:
        out: dict[str, Any] = {k: request.form.get(k, "") for k in _OIDC_TEXT}
        out["max_token_age_s"] = _int("max_token_age_s", oidc.DEFAULTS["max_token_age_s"])
        out["group_roles"] = parse_lines(request.form.get("group_roles", ""), "group_roles", many=False)
        out["group_policies"] = parse_lines(request.form.get("group_policies", ""), "group_policies", many=True)
        return out
    return _save("oidc", data, oidc.clean)
