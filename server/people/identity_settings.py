"""Admin-edited sign-in settings (``identity_settings``): one JSON document per kind.

Defaults come from here (and, for the MFA policy, from the environment), so an
installation that never opened the settings behaves as documented. Each kind's module
validates its own document (``ldap.clean``, ``oidc.clean``, ``mfa.clean_policy``).
"""
from __future__ import annotations

from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.core import audit
from server.core.errors import ValidationError
from server.core.models import Credential, IdentitySetting


def fields(data: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    """A whole settings document: a JSON object naming only known fields."""
    if not isinstance(data, dict):
        raise ValidationError("request body must be a JSON object")
    unknown = sorted(set(data) - set(defaults))
    if unknown:
        raise ValidationError(f"unknown field(s): {', '.join(unknown)} (allowed: {', '.join(sorted(defaults))})",
                              field=unknown[0])
    return data


# What ``text`` and ``whole`` accept, as JSON Schema (api/identity.py documents the fields with these).
TEXT_SCHEMA = {"type": ["string", "null"], "maxLength": 1000, "pattern": "^[^\\x00-\\x1f]*$",
               "description": "one line; null: empty"}


def whole_schema(low: int, high: int, **extra: Any) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high, **extra}


def text(data: dict[str, Any], defaults: dict[str, Any], name: str, *, limit: int = 1000) -> str:
    """A one-line text field (null: empty), stripped."""
    value = data.get(name, defaults[name])
    if value is None:
        value = ""
    if not isinstance(value, str) or len(value) > limit or any(ord(c) < 32 for c in value):
        raise ValidationError(f"'{name}' must be text (at most {limit} characters)", field=name)
    return value.strip()


def whole(data: dict[str, Any], defaults: dict[str, Any], name: str, low: int, high: int) -> int:
    value = data.get(name, defaults[name])
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 5.0 is the integer 5, as validation.integer takes it
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(f"'{name}' must be a whole number from {low} to {high}", field=name)
    return value


def secret_credential(session: Session, name: str, field: str, kinds: tuple[str, ...]) -> Credential:
    """The vault credential a setting names for its secret (a bind password, a client secret)."""
    cred = session.execute(select(Credential).where(Credential.name == name)).scalar_one_or_none()
    if cred is None or cred.kind not in kinds:
        raise ValidationError(f"'{field}' must name a {' or '.join(repr(k) for k in kinds)} credential", field=field)
    return cred


def load(session: Session, name: str, defaults: dict[str, Any]) -> dict[str, Any]:
    row = session.get(IdentitySetting, name)
    return {**defaults, **(row.data if row is not None else {})}


def save(session: Session, name: str, data: Any, clean: Callable[[Session, Any], dict[str, Any]],
         *, actor: str) -> dict[str, Any]:
    """Validate and store a whole document (PUT semantics); audited with what changed."""
    value = clean(session, data)
    row = session.get(IdentitySetting, name)
    before = dict(row.data) if row is not None else {}
    if row is None:
        row = IdentitySetting(name=name, data=value)
        session.add(row)
    else:
        row.data = value
    session.flush()
    changed = sorted(k for k in set(before) | set(value) if before.get(k) != value.get(k))
    audit.record(session, f"settings.{name}", actor=actor, target_type="settings", target_id=name, changed=changed)
    return value
