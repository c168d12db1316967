"""LDAP / Active Directory sign-in (ldap3).

Settings (``identity_settings`` ``ldap``, edited by admins in the UI or the API): the server
``url`` (``ldaps://`` or ``ldap://`` with ``start_tls``), ``ca_bundle`` (certificates are
always checked: ``tls_verify`` may be turned off only explicitly), a service bind
(``bind_dn`` and ``bind_credential``, the name of a ``password`` credential in the vault; or,
without them, a direct bind as ``user_dn_template``), the user search (``user_base``,
``user_filter`` with ``{username}``), the group search (``group_base``, ``group_filter``
with ``{dn}``; nested groups are followed, on AD in one query with
``LDAP_MATCHING_RULE_IN_CHAIN``, elsewhere level by level) and the mapping (``group_roles``,
``group_policies``, see ``mapping``). ``recheck_s``: how often an LDAP user's account is
looked up again while he uses API tokens or a session; deleted or disabled, he is
deactivated and his tokens stop working.

Only LDAP accounts and unknown names go to the directory: local accounts (the first admin)
sign in whether or not the directory is reachable.
"""
from __future__ import annotations

import ssl
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.core.errors import Unauthorized, ValidationError
from server.core.models import Credential, User, utcnow
from server.core.vault import vault
from server.people import identity_settings, mapping
from server.core.ca_bundles import ca_bundle_problem

IN_CHAIN = "1.2.840.113556.1.4.1941"  # LDAP_MATCHING_RULE_IN_CHAIN (Active Directory)
DEFAULTS: dict[str, Any] = {
    "url": "", "start_tls": False, "ca_bundle": "", "tls_verify": True, "bind_dn": "", "bind_credential": "",
    "user_dn_template": "", "user_base": "", "user_filter": "(uid={username})", "group_base": "",
    "group_filter": "(|(member={dn})(uniqueMember={dn}))", "group_roles": {}, "group_policies": {},
    "recheck_s": 900, "timeout_s": 5,
}
MAX_NESTING = 10
DISABLED_UAC = 0x2  # AD userAccountControl ACCOUNTDISABLE


class DirectoryUnavailable(Unauthorized):
    code = "directory_unavailable"


def settings(session: Session) -> dict[str, Any]:
    return identity_settings.load(session, "ldap", DEFAULTS)


def configured(session: Session) -> bool:
    return bool(settings(session)["url"])


def public(data: dict[str, Any]) -> dict[str, Any]:
    return {k: data.get(k, v) for k, v in DEFAULTS.items()}


WHOLE_FIELDS = (("recheck_s", 60, 7 * 86400), ("timeout_s", 1, 60))  # name, lowest, highest


def clean(session: Session, data: Any) -> dict[str, Any]:
    """Validate a whole LDAP settings document (PUT)."""
    data = identity_settings.fields(data, DEFAULTS)
    out: dict[str, Any] = {}
    for name in ("url", "ca_bundle", "bind_dn", "bind_credential", "user_dn_template", "user_base", "user_filter",
                 "group_base", "group_filter"):
        out[name] = identity_settings.text(data, DEFAULTS, name)
    for name in ("start_tls", "tls_verify"):
        value = data.get(name, DEFAULTS[name])
        if not isinstance(value, bool):
            raise ValidationError(f"'{name}' must be true or false", field=name)
        out[name] = value
    for name, low, high in WHOLE_FIELDS:
        out[name] = identity_settings.whole(data, DEFAULTS, name, low, high)
    if out["url"]:
        parsed = urlparse(out["url"])
        if parsed.scheme not in ("ldap", "ldaps") or not parsed.hostname:
            raise ValidationError("'url' must be ldaps://host[:port] or ldap://host[:port]", field="url")
        if parsed.scheme == "ldap" and not out["start_tls"]:
            raise ValidationError("an ldap:// url needs 'start_tls': passwords never cross the network in clear",
                                  field="start_tls")
        if not out["user_base"]:
            raise ValidationError("'user_base' is required", field="user_base")
        if "{username}" not in out["user_filter"]:
            raise ValidationError("'user_filter' must contain {username}", field="user_filter")
        if "{dn}" not in out["group_filter"]:
            raise ValidationError("'group_filter' must contain {dn}", field="group_filter")
        if bool(out["bind_dn"]) != bool(out["bind_credential"]):
            raise ValidationError("'bind_dn' and 'bind_credential' go together", field="bind_credential")
        if not out["bind_dn"] and "{username}" not in out["user_dn_template"]:
            raise ValidationError("without a service bind, 'user_dn_template' (with {username}) is required",
                                  field="user_dn_template")
    if out["ca_bundle"]:
        problem = ca_bundle_problem(out["ca_bundle"])
        if problem:
            raise ValidationError(f"'ca_bundle' {problem}", field="ca_bundle")
        try:
            ssl.create_default_context(cafile=out["ca_bundle"])
        except (OSError, ssl.SSLError) as exc:
            raise ValidationError(f"'ca_bundle' cannot be read as PEM certificates: {exc}", field="ca_bundle") from exc
    if out["bind_credential"]:
        identity_settings.secret_credential(session, out["bind_credential"], "bind_credential", ("password",))
    out["group_roles"] = mapping.clean_group_roles(data.get("group_roles"))
    out["group_policies"] = mapping.clean_group_policies(session, data.get("group_policies"))
    return out


# ------------------------------------------------------------------ talking to the server


def _server(cfg: dict[str, Any]) -> ldap3.Server:
    parsed = urlparse(cfg["url"])
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED if cfg["tls_verify"] else ssl.CERT_NONE,
                    ca_certs_file=cfg["ca_bundle"] or None, version=ssl.PROTOCOL_TLS_CLIENT)
    use_ssl = parsed.scheme == "ldaps"
    return ldap3.Server(parsed.hostname, port=parsed.port or (636 if use_ssl else 389), use_ssl=use_ssl, tls=tls,
                        get_info=ldap3.NONE, connect_timeout=cfg["timeout_s"])


def _bind(cfg: dict[str, Any], dn: str, password: str) -> ldap3.Connection | None:
    """A bound connection, None when the server refused the credentials; DirectoryUnavailable
    when it cannot be reached or its certificate is not trusted."""
    if not password:
        return None  # an empty password would be an anonymous ("unauthenticated") bind
    conn = ldap3.Connection(_server(cfg), user=dn, password=password, receive_timeout=cfg["timeout_s"],
                            raise_exceptions=False)
    try:
        conn.open()
        if cfg["start_tls"] and not conn.start_tls():
            raise DirectoryUnavailable(f"the directory {cfg['url']} refused StartTLS")
        if not conn.bind():
            return None
    except LDAPException as exc:
        raise DirectoryUnavailable(f"the directory {cfg['url']} cannot be reached ({type(exc).__name__}: {exc}); "
                                   "local accounts can still sign in") from exc
    return conn


def _service(session: Session, cfg: dict[str, Any]) -> ldap3.Connection:
    cred = session.execute(select(Credential).where(Credential.name == cfg["bind_credential"])).scalar_one_or_none()
    password = vault().decrypt(cred.secret_enc) if cred is not None else None
    conn = _bind(cfg, cfg["bind_dn"], password or "")
    if conn is None:
        raise DirectoryUnavailable("the directory refused the service bind (check bind_dn and bind_credential)")
    return conn


def _find(conn: ldap3.Connection, cfg: dict[str, Any], username: str) -> Any | None:
    flt = cfg["user_filter"].replace("{username}", escape_filter_chars(username))
    conn.search(cfg["user_base"], flt, attributes=["mail", "pwdAccountLockedTime", "userAccountControl"],
                size_limit=2)
    entries = [e for e in conn.entries]
    return entries[0] if len(entries) == 1 else None


def _groups(conn: ldap3.Connection, cfg: dict[str, Any], dn: str) -> list[str]:
    """The DNs of every group the entry belongs to, directly or through nested groups."""
    base = cfg["group_base"] or cfg["user_base"]
    found: dict[str, None] = {}
    frontier = [dn]
    for _ in range(MAX_NESTING):
        nxt = []
        for member in frontier:
            conn.search(base, cfg["group_filter"].replace("{dn}", escape_filter_chars(member)), attributes=[])
            for entry in conn.entries:
                if entry.entry_dn not in found:
                    found[entry.entry_dn] = None
                    nxt.append(entry.entry_dn)
        if not nxt or IN_CHAIN in cfg["group_filter"]:
            break
        frontier = nxt
    return list(found)


def _disabled(entry: Any) -> bool:
    attrs = entry.entry_attributes_as_dict
    if attrs.get("pwdAccountLockedTime"):
        return True
    uac = attrs.get("userAccountControl") or [0]
    try:
        return bool(int(uac[0]) & DISABLED_UAC)
    except (TypeError, ValueError):
        return False


def _lookup(session: Session, cfg: dict[str, Any], username: str, password: str | None):
    """(connection to search with, the user's entry or None). With a password and no service
    account, binds as the user himself (user_dn_template)."""
    if cfg["bind_dn"]:
        conn = _service(session, cfg)
        return conn, _find(conn, cfg, username)
    dn = cfg["user_dn_template"].replace("{username}", ldap3.utils.dn.escape_rdn(username))
    conn = _bind(cfg, dn, password or "")
    if conn is None:
        return None, None
    return conn, _find(conn, cfg, username)


def sign_in(session: Session, username: str, password: str, *, known: User | None) -> User:
    """Check the password against the directory and map the user's groups; the account is
    created or updated here. Raises Unauthorized (DirectoryUnavailable when unreachable)."""
    try:
        return _sign_in(session, username, password, known=known)
    except LDAPException as exc:  # the connection broke after the bind
        raise DirectoryUnavailable(f"the directory stopped answering ({type(exc).__name__})") from exc


def _sign_in(session: Session, username: str, password: str, *, known: User | None) -> User:
    cfg = settings(session)
    conn, entry = _lookup(session, cfg, username, password)
    try:
        if entry is None:
            raise Unauthorized("invalid username or password")
        if _disabled(entry):
            raise Unauthorized("invalid username or password (account disabled in the directory)")
        if cfg["bind_dn"]:
            user_conn = _bind(cfg, entry.entry_dn, password)
            if user_conn is None:
                raise Unauthorized("invalid username or password")
            user_conn.unbind()
        groups = _groups(conn, cfg, entry.entry_dn)
    finally:
        if conn is not None:
            conn.unbind()
    mail = (entry.entry_attributes_as_dict.get("mail") or [None])[0]
    return mapping.apply(session, source="ldap", username=username, external_id=entry.entry_dn, groups=groups,
                         settings=cfg, known=known, email=mail)


def test_user(session: Session, username: str) -> dict[str, Any]:
    """What a sign-in of ``username`` would find (no password, so needs the service bind)."""
    cfg = settings(session)
    if not cfg["url"]:
        raise ValidationError("LDAP is not configured", field="url")
    if not cfg["bind_dn"]:
        raise ValidationError("the test needs a service bind (bind_dn, bind_credential)", field="bind_dn")
    try:
        conn, entry = _lookup(session, cfg, username, None)
        try:
            if entry is None:
                return {"ok": False, "message": f"no entry matches {cfg['user_filter']} under {cfg['user_base']}"}
            groups = _groups(conn, cfg, entry.entry_dn)
        finally:
            conn.unbind()
    except DirectoryUnavailable as exc:
        return {"ok": False, "message": exc.message}
    except LDAPException as exc:
        return {"ok": False, "message": f"the directory stopped answering ({type(exc).__name__})"}
    role = mapping.role_for(groups, cfg["group_roles"])
    return {"ok": role is not None and not _disabled(entry), "dn": entry.entry_dn, "groups": groups, "role": role,
            "policies": mapping.policies_for(groups, cfg["group_policies"]), "disabled": _disabled(entry),
            "message": "ok" if role else "no group of this user is mapped to a role"}


def still_valid(session: Session, user: User) -> bool:
    """For an LDAP account in use (token, session): look it up again once ``recheck_s`` has
    passed. Gone, disabled or no longer mapped: deactivated, tokens revoked, False."""
    cfg = settings(session)
    if user.directory_checked_at is not None and utcnow() - user.directory_checked_at < timedelta(
            seconds=cfg["recheck_s"]):
        return True
    if not cfg["url"] or not cfg["bind_dn"]:
        return False  # cannot look him up: fail closed once the interval has passed (he signs in again)
    conn, entry = _lookup(session, cfg, user.username, None)
    try:
        groups = _groups(conn, cfg, entry.entry_dn) if entry is not None and not _disabled(entry) else []
    finally:
        conn.unbind()
    if entry is None or _disabled(entry) or mapping.role_for(groups, cfg["group_roles"]) is None:
        from server.people.accounts import end_access

        end_access(session, user, reason="deleted or disabled in the directory" if entry is None or _disabled(entry)
                   else "no mapped group")
        session.commit()
        return False
    mapping.apply(session, source="ldap", username=user.username, external_id=entry.entry_dn, groups=groups,
                  settings=cfg, known=user)
    session.commit()
    return True

