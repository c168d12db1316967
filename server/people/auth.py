"""Users, password hashing (argon2) and API tokens (stored as SHA-256 hashes only)."""
from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.core import audit
from server.people import login_throttle
from server.core.errors import Conflict, Forbidden, Unauthorized, ValidationError
from server.people.login_throttle import LoginThrottled
from server.core.models import ROLES, ApiToken, User, utcnow

_hasher = PasswordHasher()
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


def _refuse_throttled(session: Session, username: str, address: str | None, exc: LoginThrottled) -> None:
    """Audit a throttled attempt (the first of each waiting period) and re-raise it."""
    if exc.first:
        audit.record(session, "auth.login", actor=username, outcome="denied", reason=exc.reason,
                     address=address, retry_after_s=exc.retry_after)
        session.commit()
    raise exc


def authenticate(session: Session, username: str, password: str) -> User:
    """Check a password login; audits both outcomes.

    Throttled (see ``login_throttle``): after a few failures for an account from one
    address, that address waits longer and longer before it may try that account again,
    and is answered 429 without its password being checked; other addresses are not
    slowed, so nobody can lock the real user out. An address failing with many names is
    refused for a while.
    """
    address = login_throttle.client_address()
    try:
        login_throttle.check_address(address)
        login_throttle.claim_attempt(username, address)
    except LoginThrottled as exc:
        _refuse_throttled(session, username, address, exc)
    user = session.execute(select(User).where(User.username == username)).scalar_one_or_none()
    if user is None:
        try:
            _hasher.verify(_DUMMY_HASH, password or "")
        except VerificationError:
            pass
        audit.record(session, "auth.login", actor=username, outcome="denied", reason="unknown user", address=address)
        session.commit()
        login_throttle.failed(address)
        raise Unauthorized("invalid username or password")
    password_ok = check_password(user, password or "")  # checked either way: same timing
    if not password_ok or not user.is_active:
        audit.record(session, "auth.login", actor=username, target=user, outcome="denied",
                     reason="deactivated" if password_ok else "bad password", address=address)
        session.commit()
        login_throttle.failed(address)
        raise Unauthorized("invalid username or password")
    login_throttle.succeeded(username, address)
    user.last_login_at = utcnow()
    audit.record(session, "auth.login", actor=username, target=user, address=address)
    return user


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class PasswordChangeRequired(Forbidden):
    code = "password_change_required"


def issue_token(session: Session, user: User, name: str = "", *, actor: str | None = None) -> str:
    """Mint an API token.

    Self-service minting (``actor`` is the user himself: the token exchange, the tokens API,
    the account page) is refused while his password is one an admin set for him: the admin
    knows it, and a token would outlive it. The first admin's one-time password is shown only
    to whoever runs the server, like the command line (``actor="cli"``): both may mint.
    """
    if user.password_from_admin and actor == user.username:
        audit.record(session, "token.create", actor=actor, target=user, outcome="denied",
                     reason="password change required")
        session.commit()
        raise PasswordChangeRequired(
            "your password was set by an administrator (or is the one-time password): sign in to the "
            "web UI and choose your own password before creating API tokens")
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
