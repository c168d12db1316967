"""Credentials: secrets are encrypted on the way in and never come back out.

``secret`` and ``become_password`` are write-only: stored as vault tokens, reported only
as ``has_secret``/``has_become_password``. ``version`` is bumped whenever anything that
changes how the credential logs in changes, so an approval bound to an old version no
longer matches (see executions.fingerprint).
"""
from __future__ import annotations

import re
from typing import Any

from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.core import audit
from server.core.errors import Conflict, ValidationError
from server.core.models import CREDENTIAL_KINDS, Credential, Task
from server.core.validation import Fields, Invalid, choice, text, type_name, valid_unicode
from server.core.vault import vault

CREDENTIAL_FIELDS = ("name", "kind", "username", "secret", "become_password", "become_method", "become_user",
                     "options")
READ_ONLY = ("has_secret", "has_become_password", "version")
BECOME_METHODS = ("sudo", "su", "doas", "pbrun", "pfexec", "dzdo", "ksu", "runas", "machinectl")
# Changing any of these changes how a run authenticates.
LOGIN_FIELDS = ("kind", "username", "secret", "become_password", "become_method", "become_user")
MAX_SECRET = 64 * 1024
USER_RE = re.compile(r"^[^\s:/\x00-\x1f\x7f]+$")


def _secret_text(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"must be a string, not {type_name(value)}")
    if value == "" or value.strip() == "":
        raise Invalid("must not be empty")
    if len(value) > MAX_SECRET:
        raise Invalid(f"must be at most {MAX_SECRET} characters")
    if "\x00" in value:
        raise Invalid("must not contain NUL characters")
    if not valid_unicode(value):
        raise Invalid("must be valid Unicode text")
    return value


def _become_password(value: Any) -> str | None:
    if value is None:
        return None  # explicit null clears it
    value = _secret_text(value)
    if "\n" in value or "\r" in value:
        raise Invalid("must be a single line")
    return value


def _options(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(f"must be an object, not {type_name(value)}")
    for key, item in value.items():
        if not re.match(r"^[a-z_][a-z0-9_]{0,63}$", key):
            raise Invalid(f"has an invalid option name {key!r}")
        if not (item is None or isinstance(item, (str, bool, int))) or (isinstance(item, str) and len(item) > 1000):
            raise Invalid(f"option {key!r} must be a short string, a number or a boolean")
    return dict(value)


def normalise_secret(kind: str, secret: str) -> str:
    """Check the secret fits its kind; returns the form that is stored.

    An ``ssh_key`` must be an unencrypted private key that ``cryptography`` can load
    (OpenSSH or PEM), so a typo fails here and not at 3 a.m. on a scheduled run.
    """
    if kind == "ssh_key":
        key = secret.replace("\r\n", "\n").strip() + "\n"
        data = key.encode()
        loaders = (serialization.load_ssh_private_key, serialization.load_pem_private_key)
        for load in loaders:
            try:
                load(data, password=None)
                return key
            except TypeError as exc:  # encrypted key, or a key needing a password
                raise ValidationError(
                    "the private key is protected by a passphrase; store an unencrypted key "
                    "(the vault encrypts it at rest)", field="secret") from exc
            except Exception:  # noqa: BLE001 - any parse failure means "not this format"
                continue
        if key.startswith(("ssh-", "ecdsa-", "sk-")) or "PUBLIC KEY" in key:
            raise ValidationError("'secret' is a public key; paste the private key", field="secret")
        raise ValidationError(
            "'secret' is not a valid private key: paste the whole key, including the "
            "'-----BEGIN ... PRIVATE KEY-----' and '-----END ... PRIVATE KEY-----' lines", field="secret")
    if kind in ("password", "token") and ("\n" in secret or "\r" in secret):
        raise ValidationError(f"a {kind} must be a single line", field="secret")
    if kind == "certificate":
        text_ = secret.replace("\r\n", "\n").strip() + "\n"
        if "-----BEGIN" not in text_:
            raise ValidationError("'secret' must be a PEM certificate and key", field="secret")
        return text_
    return secret


def _become_method(value: Any) -> str | None:
    return None if value in (None, "") else choice(BECOME_METHODS)(value)


# What each check accepts, as JSON Schema (the OpenAPI CredentialInput is made of these). A
# secret of kind ssh_key or certificate must also parse as one: no schema says that.
# (No pattern for the not-blank, no-NUL rule: a regex bounded at 64 KiB makes schema-driven
# fuzzers crawl; the descriptions say it.)
_SECRET_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_SECRET,
                  "description": "not blank, no NUL character"}
_secret_text.schema = _SECRET_SCHEMA  # type: ignore[attr-defined]
_become_password.schema = {  # type: ignore[attr-defined]
    "type": ["string", "null"], "minLength": 1, "maxLength": MAX_SECRET,
    "description": "one line, not blank, no NUL character; null clears it"}
_become_method.schema = {"type": ["string", "null"], "enum": [*BECOME_METHODS, "", None]}  # type: ignore[attr-defined]
_options.schema = {  # type: ignore[attr-defined]
    "type": ["object", "null"], "propertyNames": {"pattern": "^[a-z_][a-z0-9_]{0,63}$"},
    "additionalProperties": {"type": ["string", "boolean", "integer", "null"], "maxLength": 1000},
    "description": "non-secret per-protocol options"}
# The checks of a credential's fields: check_credential applies them.
CREDENTIAL_CHECKS = {
    "name": text(120),
    "kind": choice(CREDENTIAL_KINDS),
    "username": text(255, nullable=True, allow_empty=True, pattern=USER_RE,
                     pattern_hint="must not contain spaces, ':' or '/'"),
    "secret": _secret_text,
    "become_password": _become_password,
    "become_method": _become_method,
    "become_user": text(64, nullable=True, allow_empty=True, pattern=USER_RE, pattern_hint="must be a user name"),
    "options": _options,
}


def check_credential(session: Session, data: Any, cred: Credential | None = None) -> dict[str, Any]:
    f = Fields(data, CREDENTIAL_FIELDS, partial=cred is not None, ignored=READ_ONLY)
    for key in CREDENTIAL_FIELDS:
        f.take(key, CREDENTIAL_CHECKS[key], required=key in ("name", "kind", "secret"),
               default={"options": dict}.get(key))
    f.raise_if_invalid()
    clean = f.clean
    kind = clean.get("kind", cred.kind if cred else None)
    if cred is not None and "kind" in clean and clean["kind"] != cred.kind and "secret" not in clean:
        raise ValidationError(f"changing 'kind' to {clean['kind']} needs a new 'secret' of that kind", field="secret")
    if "secret" in clean:
        clean["secret"] = normalise_secret(kind, clean["secret"])
    name = clean.get("name")
    if name is not None and (cred is None or name != cred.name):
        if session.execute(select(Credential.id).where(Credential.name == name)).first():
            raise Conflict(f"a credential named {name!r} already exists", field="name")
    return clean


def _apply(cred: Credential, clean: dict[str, Any]) -> list[str]:
    """Set the cleaned values; returns the names of the fields that changed."""
    box = vault()
    changed = []
    for key, value in clean.items():
        if key == "secret":
            if box.decrypt(cred.secret_enc) != value:
                cred.secret_enc = box.encrypt(value)
                changed.append(key)
        elif key == "become_password":
            if box.decrypt(cred.become_password_enc) != value:
                cred.become_password_enc = None if value is None else box.encrypt(value)
                changed.append(key)
        elif getattr(cred, key) != value:
            setattr(cred, key, value)
            changed.append(key)
    return changed


def create_credential(session: Session, data: Any, *, actor: str | None) -> Credential:
    clean = check_credential(session, data)
    cred = Credential(name=clean["name"], kind=clean["kind"], version=1, options={})
    _apply(cred, clean)
    session.add(cred)
    session.flush()
    # Never the secret itself: only which fields were given.
    audit.record(session, "credential.create", actor=actor, target=cred, name=cred.name, kind=cred.kind,
                 has_become_password=cred.become_password_enc is not None)
    return cred


def update_credential(session: Session, cred: Credential, data: Any, *, actor: str | None) -> Credential:
    clean = check_credential(session, data, cred)
    changed = _apply(cred, clean)
    if any(key in LOGIN_FIELDS for key in changed):
        cred.version = (cred.version or 1) + 1
    session.flush()
    if changed:
        audit.record(session, "credential.update", actor=actor, target=cred, name=cred.name,
                     changed=sorted(changed), version=cred.version)
    return cred


def tasks_using(session: Session, cred: Credential) -> list[str]:
    return list(session.execute(select(Task.name).where(Task.credential_id == cred.id).order_by(Task.name)).scalars())


def delete_credential(session: Session, cred: Credential, *, actor: str | None) -> None:
    users = tasks_using(session, cred)
    if users:
        shown = ", ".join(repr(n) for n in users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
        raise Conflict(f"credential {cred.name!r} is used by task {shown}; change those tasks first",
                       field="credential")
    audit.record(session, "credential.delete", actor=actor, target=cred, name=cred.name)
    session.delete(cred)
    session.flush()


def public(cred: Credential) -> dict[str, Any]:
    """What may be shown about a credential (API and pages): no secret, only its presence."""
    return {
        "id": cred.id,
        "name": cred.name,
        "kind": cred.kind,
        "username": cred.username,
        "has_secret": cred.secret_enc is not None,
        "has_become_password": cred.become_password_enc is not None,
        "become_method": cred.become_method,
        "become_user": cred.become_user,
        "options": cred.options or {},
        "version": cred.version,
        "created_at": cred.created_at.isoformat() if cred.created_at else None,
        "updated_at": cred.updated_at.isoformat() if cred.updated_at else None,
    }
