"""Users, password hashing (argon2) and API tokens (stored as SHA-256 hashes only)."""
from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any

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


def first_factor(session: Session, username: str, password: str) -> User:
    """Check the password (local, or the directory's for LDAP accounts); audit a failure.

    Throttled (see ``login_throttle``): after a few failures for an account from one
    address, that address waits longer and longer before it may try that account again,
    and is answered 429 without its password being checked; other addresses are not
    slowed, so nobody can lock the real user out. An address failing with many names is
    refused for a while. Success is audited by ``complete``, once the second factor passed.
    """
    address = login_throttle.client_address()
    try:
        login_throttle.check_address(address)
        login_throttle.claim_attempt(username, address)
    except LoginThrottled as exc:
        _refuse_throttled(session, username, address, exc)
    user = session.execute(select(User).where(User.username == username)).scalar_one_or_none()
    if user is None or user.auth_source == "ldap":
        from server.people import ldap

        if ldap.configured(session):
            try:
                user = ldap.sign_in(session, username, password or "", known=user)
            except Unauthorized as exc:
                audit.record(session, "auth.login", actor=username, target=user, outcome="denied", method="ldap",
                             reason=exc.message, address=address)
                session.commit()
                login_throttle.failed(address)
                raise
            login_throttle.succeeded(username, address)
            return user
    if user is None:
        try:
            _hasher.verify(_DUMMY_HASH, password or "")
        except VerificationError:
            pass
        audit.record(session, "auth.login", actor=username, outcome="denied", reason="unknown user", address=address,
                     method="password")
        session.commit()
        login_throttle.failed(address)
        raise Unauthorized("invalid username or password")
    password_ok = check_password(user, password or "")  # checked either way: same timing
    if not password_ok or not user.is_active:
        reason = "deactivated" if password_ok else "bad password"
        if user.auth_source != "local":
            reason = f"{user.auth_source} account: no local password"
        audit.record(session, "auth.login", actor=username, target=user, outcome="denied", reason=reason,
                     address=address, method="password")
        session.commit()
        login_throttle.failed(address)
        raise Unauthorized("invalid username or password")
    login_throttle.succeeded(username, address)
    return user


def second_factor(session: Session, user: User, otp: Any) -> datetime | None:
    """For an account with TOTP: check ``otp``, throttled like passwords (its own counter).
    Returns when the factor was given (None: the account has none)."""
    from server.people import mfa

    if not mfa.enrolled(user):
        return None
    if otp is None or otp == "":
        mfa.verify(session, user, otp)  # raises OtpRequired; not a failed attempt
    address = login_throttle.client_address()
    key = user.username + "\x00otp"
    try:
        login_throttle.claim_attempt(key, address)
    except LoginThrottled as exc:
        _refuse_throttled(session, user.username, address, exc)
    try:
        mfa.verify(session, user, otp)
    except Unauthorized:
        login_throttle.failed(address)
        raise
    login_throttle.succeeded(key, address)
    return utcnow()


def complete(session: Session, user: User, otp: Any, *, via: str) -> datetime | None:
    """The second factor if the account has one, then the audited sign-in (method, address,
    factor). ``via`` is "web" or "api". Returns when the second factor was given."""
    mfa_at = second_factor(session, user, otp)
    user.last_login_at = utcnow()
    method = "password" if user.auth_source == "local" else user.auth_source
    audit.record(session, "auth.login", actor=user.username, target=user, address=login_throttle.client_address(),
                 method=method, via=via, mfa=mfa_at is not None)
    return mfa_at


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class PasswordChangeRequired(Forbidden):
    code = "password_change_required"


MAX_TOKEN_LIFETIME_S = 5 * 366 * 86400


EXPIRES_IN_SCHEMA = {"type": ["integer", "null"], "minimum": 60, "maximum": MAX_TOKEN_LIFETIME_S,
                     "description": "seconds; default (null): never expires"}


def token_expiry(value: Any) -> datetime | None:
    """``expires_in_s``: a whole number of seconds from now (60 s to five years), or None."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 3600.0 is 3600
    if isinstance(value, bool) or not isinstance(value, int) or not 60 <= value <= MAX_TOKEN_LIFETIME_S:
        raise ValidationError(f"'expires_in_s' must be a whole number of seconds from 60 to {MAX_TOKEN_LIFETIME_S}",
                              field="expires_in_s")
    return utcnow() + timedelta(seconds=value)


def issue_token(session: Session, user: User, name: str = "", *, actor: str | None = None,
                scopes: list[str] | None = None, expires_at: datetime | None = None,
                mfa_at: datetime | None = None) -> str:
    """Mint an API token, limited to ``scopes`` (None: every scope the owner's role holds;
    see ``scopes``) and valid until ``expires_at`` (None: until revoked).

    Self-service minting (``actor`` is the user himself: the token exchange, the tokens API,
    the account page) is refused while his password is one an admin set for him: the admin
    knows it, and a token would outlive it. The first admin's one-time password is shown only
    to whoever runs the server, like the command line (``actor="cli"``): both may mint.
    """
    if user.password_from_admin and actor == user.username and user.auth_source == "local":
        audit.record(session, "token.create", actor=actor, target=user, outcome="denied",
                     reason="password change required")
        session.commit()
        raise PasswordChangeRequired(
            "your password was set by an administrator (or is the one-time password): sign in to the "
            "web UI and choose your own password before creating API tokens")
    token = "tm_" + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, name=name, token_hash=_token_hash(token), prefix=token[:10],
                   scopes=scopes, expires_at=expires_at, mfa_at=mfa_at)
    session.add(row)
    session.flush()
    audit.record(session, "token.create", actor=actor or user.username, target=row, user=user.username, name=name,
                 scopes=scopes or "all", expires_at=expires_at)
    return token


def token_row(session: Session, token: str) -> ApiToken | None:
    """The live token row for a presented value: not revoked, not expired, its owner active.

    Checked on every request, so a revoked or expired token is refused at once."""
    row = session.execute(
        select(ApiToken).where(ApiToken.token_hash == _token_hash(token), ApiToken.revoked_at.is_(None))
    ).scalar_one_or_none()
    now = utcnow()
    if row is None or not row.user.is_active or (row.expires_at is not None and row.expires_at <= now):
        return None
    if row.user.auth_source != "local" and not directory_confirms(session, row.user):
        return None
    if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
        row.last_used_at = now  # coarse, so reads don't write on every request
    return row


def directory_confirms(session: Session, user: User) -> bool:
    """An LDAP account is looked up again now and then (``ldap.still_valid``); when the
    directory cannot be asked once that is due, access is refused (fails closed). An OIDC
    account is valid for a while after its last sign-in (``oidc.still_valid``)."""
    from server.people import ldap, oidc

    if user.auth_source == "oidc":
        return oidc.still_valid(session, user)
    try:
        return ldap.still_valid(session, user)
    except (ldap.DirectoryUnavailable, ldap.LDAPException):
        session.rollback()
        return False


def user_for_token(session: Session, token: str) -> User | None:
    row = token_row(session, token)
    return None if row is None else row.user


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
