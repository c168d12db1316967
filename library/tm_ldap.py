#!/usr/bin/python
# Task Manager: directory tasks over LDAPS with ldap3.
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: tm_ldap
short_description: Search, check, unlock and modify directory entries over LDAPS
description:
  - Binds over LDAPS (TLS verified by default) with a bind DN and password and runs one
    action. Runs on the controller (the host's connection is local) and needs ldap3.
  - C(search) returns entries; C(check_account) reports whether an account is locked
    (OpenLDAP ppolicy C(pwdAccountLockedTime), Active Directory C(lockoutTime), 389-DS
    C(nsAccountLock)) or disabled; C(unlock) clears those lock markers; C(modify) applies
    attribute changes. Check mode reports what would change without writing.
options:
  url: {description: "ldaps://host:port", required: true, type: str}
  bind_dn: {description: DN (or AD user principal) to bind as, type: str}
  bind_password: {description: Password for bind_dn, type: str, no_log: true}
  validate_certs: {description: Verify the server certificate, type: bool, default: true}
  ca_bundle: {description: PEM file with the CA(s) to trust, type: path}
  action: {description: What to do, type: str, choices: [search, check_account, unlock, modify], default: search}
  base_dn: {description: Search base, type: str}
  filter: {description: LDAP filter for search, type: str, default: "(objectClass=*)"}
  scope: {description: Search scope, type: str, choices: [base, one, sub], default: sub}
  attributes: {description: Attributes to return, type: list, elements: str, default: ["*"]}
  size_limit: {description: Maximum entries returned, type: int, default: 500}
  dn: {description: Entry to check/unlock/modify, type: str}
  account: {description: Find the entry by this account name instead of dn (uid, sAMAccountName or cn), type: str}
  changes:
    description: >-
      For modify: {attribute: {"replace"|"add"|"delete": value or list}}; a plain value
      means replace; null means delete the attribute.
    type: dict
  timeout: {description: Seconds for connect and each operation, type: int, default: 15}
requirements: [ldap3]
"""

EXAMPLES = r"""
- name: Unlock an account
  tm_ldap:
    url: "{{ tm_ldap_url }}"
    bind_dn: "{{ tm_username }}"
    bind_password: "{{ tm_secret }}"
    ca_bundle: "{{ tm_ca_bundle | default(omit) }}"
    action: unlock
    base_dn: dc=example,dc=org
    account: alice
"""

import ssl

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    import ldap3
    from ldap3.core import exceptions as lex
    HAS_LDAP3 = True
except ImportError:  # pragma: no cover
    HAS_LDAP3 = False

LOCK_ATTRS = ["pwdAccountLockedTime", "lockoutTime", "nsAccountLock", "userAccountControl", "pwdFailureTime"]
AD_DISABLED = 0x2


def _connect(module):
    p = module.params
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED if p["validate_certs"] else ssl.CERT_NONE,
                    ca_certs_file=p["ca_bundle"] if p["validate_certs"] else None)
    url = p["url"]
    if not url.lower().startswith("ldaps://"):
        module.fail_json(msg=f"url must be ldaps://host[:port] (TLS), not {url!r}")
    server = ldap3.Server(url, use_ssl=True, tls=tls, connect_timeout=int(p["timeout"]), get_info=ldap3.NONE)
    conn = ldap3.Connection(server, user=p["bind_dn"], password=p["bind_password"] or None,
                            receive_timeout=p["timeout"], raise_exceptions=False, read_only=False)
    try:
        if not conn.bind():
            r = conn.result
            module.fail_json(msg=f"bind as {p['bind_dn']!r} refused: {r.get('description')} {r.get('message') or ''}".strip(),
                             ldap_result=_clean(r))
    except lex.LDAPSocketOpenError as exc:
        text = str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            module.fail_json(msg=f"TLS certificate of {url} not trusted ({text[:300]}); give ca_bundle or validate_certs: false")
        module.fail_json(msg=f"cannot connect to {url}: {text[:300]}")
    except lex.LDAPException as exc:
        module.fail_json(msg=f"LDAP error talking to {url}: {exc}")
    return conn


def _clean(result):
    return {k: (v if isinstance(v, (str, int, bool, type(None))) else str(v)) for k, v in (result or {}).items()
            if k in ("result", "description", "message", "dn")}


def _entry_dict(entry):
    out = {}
    for name, value in entry["attributes"].items():
        vals = value if isinstance(value, list) else [value]
        out[name] = [v.isoformat() if hasattr(v, "isoformat") else v.hex() if isinstance(v, bytes) else v for v in vals]
    return {"dn": entry["dn"], "attributes": out}


def _find(module, conn):
    p = module.params
    if p["dn"]:
        ok = conn.search(p["dn"], "(objectClass=*)", search_scope=ldap3.BASE, attributes=["*"] + LOCK_ATTRS)
        if not ok or not conn.response:
            module.fail_json(msg=f"entry {p['dn']!r} not found: {conn.result.get('description')}")
        return [e for e in conn.response if e.get("type") == "searchResEntry"][0]
    if not (p["account"] and p["base_dn"]):
        module.fail_json(msg="give dn, or account and base_dn")
    account = ldap3.utils.conv.escape_filter_chars(p["account"])
    flt = f"(|(uid={account})(sAMAccountName={account})(cn={account}))"
    conn.search(p["base_dn"], flt, search_scope=ldap3.SUBTREE, attributes=["*"] + LOCK_ATTRS, size_limit=3)
    entries = [e for e in conn.response or [] if e.get("type") == "searchResEntry"]
    if not entries:
        module.fail_json(msg=f"no account {p['account']!r} under {p['base_dn']}")
    if len(entries) > 1:
        module.fail_json(msg=f"account {p['account']!r} is ambiguous: {', '.join(e['dn'] for e in entries)}")
    return entries[0]


def _first(value):
    """ldap3 gives lists (empty for requested attributes the entry lacks)."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _lock_state(entry):
    a = entry["attributes"]
    locked_by = []
    if _first(a.get("pwdAccountLockedTime")) not in (None, ""):
        locked_by.append("pwdAccountLockedTime")
    lockout = _first(a.get("lockoutTime"))
    # AD: 0 (or the 1601 epoch ldap3 turns it into) means not locked.
    if lockout not in (None, "", 0, "0") and not str(lockout).startswith("1601-01-01"):
        locked_by.append("lockoutTime")
    if str(_first(a.get("nsAccountLock"))).lower() == "true":
        locked_by.append("nsAccountLock")
    uac = _first(a.get("userAccountControl"))
    disabled = bool(uac and int(uac) & AD_DISABLED)
    return locked_by, disabled


def _modify(module, conn, dn, changes):
    if module.check_mode:
        return
    if not conn.modify(dn, changes):
        r = conn.result
        module.fail_json(msg=f"modify of {dn} refused: {r.get('description')} {r.get('message') or ''}".strip(),
                         ldap_result=_clean(r))


def _changes(module, spec):
    ops = {"replace": ldap3.MODIFY_REPLACE, "add": ldap3.MODIFY_ADD, "delete": ldap3.MODIFY_DELETE}
    out = {}
    for attr, change in (spec or {}).items():
        if change is None:
            out[attr] = [(ldap3.MODIFY_DELETE, [])]
            continue
        if not isinstance(change, dict):
            change = {"replace": change}
        for op, value in change.items():
            if op not in ops:
                module.fail_json(msg=f"change of {attr}: operation must be replace, add or delete, not {op!r}")
            values = [] if value is None else value if isinstance(value, list) else [value]
            out.setdefault(attr, []).append((ops[op], [str(v) for v in values]))
    if not out:
        module.fail_json(msg="modify needs changes")
    return out


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            bind_dn=dict(type="str"),
            bind_password=dict(type="str", no_log=True),
            validate_certs=dict(type="bool", default=True),
            ca_bundle=dict(type="path"),
            action=dict(type="str", default="search", choices=["search", "check_account", "unlock", "modify"]),
            base_dn=dict(type="str"),
            filter=dict(type="str", default="(objectClass=*)"),
            scope=dict(type="str", default="sub", choices=["base", "one", "sub"]),
            attributes=dict(type="list", elements="str", default=["*"]),
            size_limit=dict(type="int", default=500),
            dn=dict(type="str"),
            account=dict(type="str"),
            changes=dict(type="dict"),
            timeout=dict(type="int", default=15),
        ),
        supports_check_mode=True,
    )
    if not HAS_LDAP3:
        module.fail_json(msg=missing_required_lib("ldap3"))
    p = module.params
    conn = _connect(module)
    try:
        if p["action"] == "search":
            if not p["base_dn"]:
                module.fail_json(msg="search needs base_dn")
            scope = {"base": ldap3.BASE, "one": ldap3.LEVEL, "sub": ldap3.SUBTREE}[p["scope"]]
            try:
                conn.search(p["base_dn"], p["filter"], search_scope=scope, attributes=p["attributes"],
                            size_limit=p["size_limit"])
            except lex.LDAPInvalidFilterError as exc:
                module.fail_json(msg=f"invalid filter {p['filter']!r}: {exc}")
            if conn.result.get("result") not in (0, 4):  # 4: size limit exceeded, partial result
                module.fail_json(msg=f"search failed: {conn.result.get('description')} {conn.result.get('message') or ''}".strip())
            entries = [_entry_dict(e) for e in conn.response or [] if e.get("type") == "searchResEntry"]
            module.exit_json(changed=False, entries=entries, count=len(entries),
                             truncated=conn.result.get("result") == 4)
        entry = _find(module, conn)
        dn = entry["dn"]
        locked_by, disabled = _lock_state(entry)
        if p["action"] == "check_account":
            module.exit_json(changed=False, dn=dn, locked=bool(locked_by), locked_by=locked_by, disabled=disabled)
        if p["action"] == "unlock":
            changes = {}
            if "pwdAccountLockedTime" in locked_by:
                changes["pwdAccountLockedTime"] = [(ldap3.MODIFY_DELETE, [])]
            if "lockoutTime" in locked_by:
                changes["lockoutTime"] = [(ldap3.MODIFY_REPLACE, ["0"])]
            if "nsAccountLock" in locked_by:
                changes["nsAccountLock"] = [(ldap3.MODIFY_REPLACE, ["false"])]
            if changes:
                _modify(module, conn, dn, changes)
            module.exit_json(changed=bool(changes), dn=dn, was_locked=bool(locked_by), cleared=sorted(changes),
                             disabled=disabled,
                             msg=(f"unlocked {dn} (cleared {', '.join(sorted(changes))})" if changes
                                  else f"{dn} was not locked"))
        changes = _changes(module, p["changes"])
        current = entry["attributes"]
        # Only report a change when the entry differs from what is asked.
        needed = {}
        for attr, ops in changes.items():
            have = current.get(attr)
            have = [str(v) for v in (have if isinstance(have, list) else [have] if have not in (None, "") else [])]
            for op, values in ops:
                if (op == ldap3.MODIFY_REPLACE and sorted(have) != sorted(values)) \
                        or (op == ldap3.MODIFY_ADD and not set(values) <= set(have)) \
                        or (op == ldap3.MODIFY_DELETE and (have if not values else set(values) & set(have))):
                    needed.setdefault(attr, []).append((op, values))
        if needed:
            _modify(module, conn, dn, needed)
        module.exit_json(changed=bool(needed), dn=dn, modified=sorted(needed))
    finally:
        conn.unbind()


if __name__ == "__main__":
    main()
