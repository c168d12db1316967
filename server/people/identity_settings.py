"""Admin-edited sign-in settings (``identity_settings``): one JSON document per kind.

Defaults come from here (and, for the MFA policy, from the environment), so an
installation that never opened the settings behaves as documented. Each kind's module
validates its own document (``ldap.clean``, ``oidc.clean``, ``mfa.clean_policy``).
"""
from __future__ import annotations

from typing import Any, Callable

from sqlalchemy.orm import Session

from server.core import audit
from server.core.models import IdentitySetting


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
