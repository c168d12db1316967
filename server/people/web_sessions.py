"""Server-side web sessions, so that signing out, changing or resetting a password really
ends a session.

Flask's session cookie is signed, not stored: on its own, a copied cookie would keep
working after logout. Each sign-in therefore gets a random key, kept in the signed cookie
and, as a SHA-256 hash only, in ``web_sessions``; flask-login's user loader accepts a cookie
only while its row is neither revoked nor idle longer than ``PERMANENT_SESSION_LIFETIME``.
"""
from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from server.core import db
from server.core.models import User, WebSession, utcnow

log = logging.getLogger(__name__)

COOKIE_KEY = "_tm_sid"  # the key's name inside the signed session cookie
SEEN_EVERY = timedelta(minutes=1)  # last_seen_at is coarse, so reads don't write every time


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _idle_limit() -> timedelta:
    from flask import current_app, has_app_context

    if has_app_context():
        return current_app.permanent_session_lifetime
    return timedelta(hours=12)


def _absolute_limit() -> timedelta:
    """However active, a session ends this long after its sign-in (``SESSION_ABSOLUTE_LIFETIME``)."""
    from flask import current_app, has_app_context

    if has_app_context():
        return current_app.config.get("SESSION_ABSOLUTE_LIFETIME", timedelta(hours=24))
    return timedelta(hours=24)


def live(row: WebSession, now) -> bool:
    return (row.revoked_at is None and now - row.last_seen_at <= _idle_limit()
            and now - row.created_at <= _absolute_limit())


def current_key() -> str | None:
    """This request's session key (None outside a request or when not signed in)."""
    from flask import has_request_context, session

    return session.get(COOKIE_KEY) if has_request_context() else None


def start(s: Session, user: User, address: str | None, *, method: str = "password",
          mfa_at=None) -> str:
    """Record a new session for ``user``; return the key to put in the cookie.

    The user's ended sessions are dropped here, so the table stays the size of the live ones.
    """
    now = utcnow()
    s.execute(delete(WebSession).where(
        WebSession.user_id == user.id,
        or_(WebSession.revoked_at.is_not(None), WebSession.last_seen_at < now - _idle_limit(),
            WebSession.created_at < now - _absolute_limit())))
    key = secrets.token_urlsafe(32)
    s.add(WebSession(user_id=user.id, key_hash=_hash(key), address=(address or "")[:64] or None,
                     created_at=now, last_seen_at=now, method=method, mfa_at=mfa_at))
    s.flush()
    return key


def user_for(s: Session, user_id: str, key: str | None) -> User | None:
    """The user of a live session: the cookie's user id and key must match a live row."""
    if not key or not user_id.isdigit():
        return None
    row = s.execute(select(WebSession).where(WebSession.key_hash == _hash(key))).scalar_one_or_none()
    now = utcnow()
    if row is None or row.user_id != int(user_id) or not live(row, now):
        return None
    user = s.get(User, row.user_id)
    if user is None or not user.is_active:
        return None
    if user.auth_source != "local":
        from server.people.auth import directory_confirms

        if not directory_confirms(s, user):
            return None
    if now - row.last_seen_at > SEEN_EVERY:
        _touch(row.id, now)
    return user


def _touch(row_id: int, now) -> None:
    """Move last_seen_at on its own short transaction: the request's session may be
    mid-way through the view's work and must not be committed from here."""
    try:
        with db.engine().begin() as conn:
            conn.execute(update(WebSession).where(WebSession.id == row_id).values(last_seen_at=now))
    except Exception as exc:  # noqa: BLE001 - a missed touch only shortens the idle window
        log.warning("could not record session activity: %s", exc)


def end(s: Session, key: str | None) -> bool:
    """Revoke one session (sign-out)."""
    if not key:
        return False
    return bool(s.execute(
        update(WebSession).where(WebSession.key_hash == _hash(key), WebSession.revoked_at.is_(None))
        .values(revoked_at=utcnow()).execution_options(synchronize_session=False)).rowcount)


def revoke_all(s: Session, user: User, *, keep: str | None = None) -> int:
    """Revoke every live session of ``user`` except the one whose key is ``keep``."""
    q = update(WebSession).where(WebSession.user_id == user.id, WebSession.revoked_at.is_(None))
    if keep:
        q = q.where(WebSession.key_hash != _hash(keep))
    return s.execute(q.values(revoked_at=utcnow()).execution_options(synchronize_session=False)).rowcount


def current(s: Session) -> WebSession | None:
    key = current_key()
    if not key:
        return None
    return s.execute(select(WebSession).where(WebSession.key_hash == _hash(key))).scalar_one_or_none()


def mfa_at(s: Session | None = None):
    """When this request's web session last gave a second factor (None: never, or no session)."""
    row = current(s or db.session())
    return None if row is None else row.mfa_at


def mark_mfa(s: Session, when) -> None:
    """A second factor was just given again (step-up) in this session."""
    row = current(s)
    if row is not None:
        row.mfa_at = when


def active_of(s: Session, user: User) -> list[WebSession]:
    """The user's live sessions, newest first (the account page's list)."""
    now = utcnow()
    rows = s.execute(select(WebSession).where(WebSession.user_id == user.id, WebSession.revoked_at.is_(None))
                     .order_by(WebSession.last_seen_at.desc())).scalars()
    return [r for r in rows if live(r, now)]


def is_current(row: WebSession) -> bool:
    key = current_key()
    return bool(key) and row.key_hash == _hash(key)


def revoke(s: Session, user: User, session_id: int) -> bool:
    """End one of the user's own sessions (another browser, a lost laptop)."""
    return bool(s.execute(
        update(WebSession).where(WebSession.id == session_id, WebSession.user_id == user.id,
                                 WebSession.revoked_at.is_(None))
        .values(revoked_at=utcnow()).execution_options(synchronize_session=False)).rowcount)
