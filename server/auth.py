"""Users, password hashing (argon2) and API tokens (stored as SHA-256 hashes only)."""
from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import audit
from .errors import ApiError, Conflict, Unauthorized, ValidationError
from .models import ROLES, ApiToken, User, utcnow

_hasher = PasswordHasher()
MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=5)
MAX_FAILURES_PER_ADDRESS = 30
ADDRESS_WINDOW = timedelta(minutes=15)
# Verified against when the user does not exist, so timing does not reveal valid names.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password(user: User, password: str) -> bool:
    try:
        return _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def create_user(session: Session, username: str, role: str, password: str, *, actor: str | None = None) -> User:
    username = (username or "").strip()
    if not username or len(username) > 80:
        raise ValidationError("username must be 1-80 characters", field="username")
    if role not in ROLES:
        raise ValidationError(f"role must be one of {', '.join(ROLES)}", field="role")
    if len(password or "") < 8:
        raise ValidationError("password must be at least 8 characters", field="password")
    if session.execute(select(User.id).where(User.username == username)).first():
        raise Conflict(f"user {username!r} already exists", field="username")
    user = User(username=username, role=role, password_hash=hash_password(password))
    session.add(user)
    session.flush()
    audit.record(session, "user.create", actor=actor, target=user, username=username, role=role)
    return user


def _client_address() -> str | None:
    from flask import has_request_context, request

    return request.remote_addr if has_request_context() else None


def _address_key(address: str) -> str:
    return "taskmanager:login-failures:" + address


def _address_blocked(address: str | None) -> bool:
    """Too many failures from one address (password spraying across many names)."""
    if not address:
        return False
    try:
        from .redis_conn import redis

        return int(redis().get(_address_key(address)) or 0) >= MAX_FAILURES_PER_ADDRESS
    except Exception:  # noqa: BLE001 - Redis down: the per-user lockout still applies
        return False


def _address_failed(address: str | None) -> None:
    if not address:
        return
    try:
        from .redis_conn import redis

        pipe = redis().pipeline()
        pipe.incr(_address_key(address))
        pipe.expire(_address_key(address), int(ADDRESS_WINDOW.total_seconds()), nx=True)
        pipe.execute()
    except Exception:  # noqa: BLE001
        pass


def authenticate(session: Session, username: str, password: str) -> User:
    """Check a password login, with throttling after repeated failures; audits both outcomes.

    Two throttles: an account locks for ``LOCKOUT`` after ``MAX_FAILED_LOGINS`` failures in a
    row, and a client address that fails ``MAX_FAILURES_PER_ADDRESS`` times within
    ``ADDRESS_WINDOW`` (any names) is refused until the window ends.
    """
    address = _client_address()
    if _address_blocked(address):
        audit.record(session, "auth.login", actor=username, outcome="denied", reason="address throttled",
                     address=address)
        session.commit()
        raise ApiError("too many failed logins from your address; try again later", code="throttled", status=429)
    user = session.execute(select(User).where(User.username == username)).scalar_one_or_none()
    now = utcnow()
    if user is None:
        try:
            _hasher.verify(_DUMMY_HASH, password or "")
        except VerificationError:
            pass
        audit.record(session, "auth.login", actor=username, outcome="denied", reason="unknown user")
        session.commit()
        _address_failed(address)
        raise Unauthorized("invalid username or password")
    if user.locked_until and user.locked_until > now:
        audit.record(session, "auth.login", actor=username, target=user, outcome="denied", reason="locked")
        session.commit()
        _address_failed(address)
        raise Unauthorized("too many failed logins; try again later", code="locked")
    if not user.is_active or not check_password(user, password or ""):
        user.failed_logins = (user.failed_logins or 0) + 1
        if user.failed_logins >= MAX_FAILED_LOGINS:
            user.locked_until = now + LOCKOUT
            user.failed_logins = 0
        audit.record(session, "auth.login", actor=username, target=user, outcome="denied", reason="bad password")
        session.commit()
        _address_failed(address)
        raise Unauthorized("invalid username or password")
    user.failed_logins = 0
    user.locked_until = None
    user.last_login_at = now
    audit.record(session, "auth.login", actor=username, target=user)
    return user


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(session: Session, user: User, name: str = "", *, actor: str | None = None) -> str:
    token = "tm_" + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, name=name, token_hash=_token_hash(token), prefix=token[:10])
    session.add(row)
    session.flush()
    audit.record(session, "token.create", actor=actor or user.username, target=row, user=user.username, name=name)
    return token


def user_for_token(session: Session, token: str) -> User | None:
    row = session.execute(
        select(ApiToken).where(ApiToken.token_hash == _token_hash(token), ApiToken.revoked_at.is_(None))
    ).scalar_one_or_none()
    if row is None or not row.user.is_active:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
        row.last_used_at = now  # coarse, so reads don't write on every request
    return row.user


def ensure_first_admin(session: Session) -> str | None:
    """Create the user ``admin`` if no admin exists; return its one-time password (else None).

    The password must be changed at first sign-in (``must_change_password``).
    """
    if session.execute(select(User.id).where(User.role == "admin")).first():
        return None
    password = secrets.token_urlsafe(12)
    user = create_user(session, "admin", "admin", password, actor="bootstrap")
    user.must_change_password = True
    session.commit()
    return password


def first_admin_banner(password: str) -> str:
    line = "=" * 60
    return f"{line}\nFirst admin created. Username: admin   One-time password: {password}\n{line}"
