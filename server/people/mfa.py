"""TOTP second factor (RFC 6238, pyotp): enrolment, verification, recovery codes, policy.

The secret is vault-encrypted in ``users.totp_secret``; it counts only once confirmed with
a code (``totp_confirmed_at``). A code is accepted for the current 30 s step or one either
side (clock drift), and only for a step later than the last one accepted
(``totp_last_step``): a code seen once, on the wire or over a shoulder, is useless after.
Recovery codes (ten, shown once) are stored as SHA-256 hashes and each works once.

Policy (``identity_settings`` ``mfa``): the roles that must use a second factor (default
admins and approvers, ``TASKMANAGER_MFA_ROLES``), how many days a new account of such a
role may still sign in without one (``grace_days``, default 7: the account is reminded,
then held to it), and how many minutes a second factor stays fresh for approval
decisions and credential edits (``reauth_minutes``).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from datetime import datetime, timedelta
from typing import Any

import pyotp
import segno
from sqlalchemy.orm import Session

from server.core import audit
from server.core.errors import ApiError, Conflict, Forbidden, Unauthorized, ValidationError
from server.core.models import ROLES, User, utcnow
from server.core.vault import vault
from server.people import identity_settings

ISSUER = "Task Manager"
RECOVERY_CODES = 10
DEFAULT_REAUTH_MINUTES = 15
DEFAULT_GRACE_DAYS = 7


class OtpRequired(Unauthorized):
    code = "otp_required"


class OtpInvalid(Unauthorized):
    code = "invalid_otp"


class EnrollmentRequired(Forbidden):
    code = "mfa_enrollment_required"


class StepUpRequired(ApiError):
    """401: the action needs a second factor more recent than ``reauth_minutes``."""

    status = 401
    code = "mfa_step_up_required"


# ------------------------------------------------------------------ policy


def _default_roles() -> list[str]:
    raw = os.environ.get("TASKMANAGER_MFA_ROLES", "admin,approver")
    return [r.strip() for r in raw.split(",") if r.strip() in ROLES]


def policy(session: Session) -> dict[str, Any]:
    return identity_settings.load(session, "mfa", {"required_roles": _default_roles(),
                                                   "reauth_minutes": DEFAULT_REAUTH_MINUTES,
                                                   "grace_days": DEFAULT_GRACE_DAYS})


def clean_policy(_session: Session, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValidationError("request body must be a JSON object")
    unknown = sorted(set(data) - {"required_roles", "reauth_minutes", "grace_days"})
    if unknown:
        raise ValidationError(f"unknown field(s): {', '.join(unknown)}", field=unknown[0])
    roles = data.get("required_roles", _default_roles())
    if not isinstance(roles, list) or any(r not in ROLES for r in roles):
        raise ValidationError(f"'required_roles' must be a list of: {', '.join(ROLES)}", field="required_roles")
    defaults = {"reauth_minutes": DEFAULT_REAUTH_MINUTES, "grace_days": DEFAULT_GRACE_DAYS}
    minutes = identity_settings.whole(data, defaults, "reauth_minutes", 1, 24 * 60)
    grace = identity_settings.whole(data, defaults, "grace_days", 0, 90)
    return {"required_roles": sorted(set(roles)), "reauth_minutes": minutes, "grace_days": grace}


def enrolled(user: User) -> bool:
    return user.totp_confirmed_at is not None


def required_for(session: Session, user: User) -> bool:
    return user.role in policy(session)["required_roles"]


def should_enrol(session: Session, user: User) -> bool:
    """The role requires a second factor and the account has none (yet)."""
    return required_for(session, user) and not enrolled(user)


def must_enrol(session: Session, user: User) -> bool:
    """... and its grace period is over: nothing else until it enrols."""
    if not should_enrol(session, user):
        return False
    grace = timedelta(days=policy(session)["grace_days"])
    return user.created_at is None or utcnow() - user.created_at >= grace


def fresh(session: Session, mfa_at: datetime | None) -> bool:
    if mfa_at is None:
        return False
    return utcnow() - mfa_at <= timedelta(minutes=policy(session)["reauth_minutes"])


# ------------------------------------------------------------------ enrolment


def _totp(user: User) -> pyotp.TOTP:
    return pyotp.TOTP(vault().decrypt(user.totp_secret), name=user.username, issuer=ISSUER)


def begin(session: Session, user: User) -> tuple[str, str]:
    """Start (or restart) enrolment: a new secret, not yet in force. Returns (secret, otpauth URI)."""
    if enrolled(user):
        raise Conflict("TOTP is already enabled; disable it first (with a current code)")
    secret = pyotp.random_base32()
    user.totp_secret = vault().encrypt(secret)
    user.totp_last_step = None
    audit.record(session, "mfa.enrol", actor=user.username, target=user, step="started")
    return secret, pyotp.TOTP(secret, name=user.username, issuer=ISSUER).provisioning_uri()


def qr_svg(uri: str) -> str:
    """The otpauth URI as an inline SVG QR code, drawn here (no outside service sees the secret)."""
    return segno.make(uri, error="m").svg_inline(scale=5, dark="#000", light="#fff")


def confirm(session: Session, user: User, code: Any) -> list[str]:
    """Put TOTP in force with a first valid code; return the recovery codes (shown once)."""
    if enrolled(user):
        raise Conflict("TOTP is already enabled")
    if user.totp_secret is None:
        raise Conflict("start the enrolment first (POST /api/v1/me/mfa/totp)")
    if not _check_totp(user, _code(code)):
        audit.record(session, "mfa.enrol", actor=user.username, target=user, outcome="denied", reason="bad code")
        session.commit()
        raise OtpInvalid("the code does not match; check the authenticator's clock and try the next code")
    codes = [_new_recovery_code() for _ in range(RECOVERY_CODES)]
    user.recovery_codes = [_hash(c) for c in codes]
    user.totp_confirmed_at = utcnow()
    audit.record(session, "mfa.enrol", actor=user.username, target=user, step="confirmed")
    return codes


def disable(session: Session, user: User, code: Any, *, actor: User | None = None) -> None:
    """Turn TOTP off: the user with a current code (or recovery code); an admin for someone
    who lost his device (``actor``), without one."""
    if actor is None or actor.id == user.id:
        verify(session, user, code)
    user.totp_secret = None
    user.totp_confirmed_at = None
    user.totp_last_step = None
    user.recovery_codes = None
    audit.record(session, "mfa.disable", actor=(actor or user).username, target=user)


# ------------------------------------------------------------------ verification


def _code(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("'code' is required: a 6-digit code or a recovery code", field="code")
    return "".join(value.split())


def _hash(code: str) -> str:
    return hashlib.sha256(code.lower().replace("-", "").encode()).hexdigest()


def _new_recovery_code() -> str:
    raw = secrets.token_hex(5)
    return f"{raw[:5]}-{raw[5:]}"


def _check_totp(user: User, code: str) -> bool:
    """A valid code for a step later than the last accepted one (drift: ±1 step)."""
    if not code.isdigit() or len(code) != 6:
        return False
    totp = _totp(user)
    now_step = totp.timecode(datetime.fromtimestamp(time.time()))
    for step in (now_step - 1, now_step, now_step + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            if user.totp_last_step is not None and step <= user.totp_last_step:
                return False  # replayed
            user.totp_last_step = step
            return True
    return False


def verify(session: Session, user: User, otp: Any) -> str:
    """Check a second factor for an enrolled user: "totp" or "recovery", else OtpRequired
    (none given) / OtpInvalid (wrong, replayed, or a used recovery code). Audited."""
    if otp is None or otp == "":
        raise OtpRequired("this account uses a second factor: send 'otp' (a current code or a recovery code)")
    code = _code(otp)
    if _check_totp(user, code):
        kind = "totp"
    elif _hash(code) in (user.recovery_codes or []):
        user.recovery_codes = [h for h in user.recovery_codes if h != _hash(code)]
        kind = "recovery"
    else:
        audit.record(session, "mfa.verify", actor=user.username, target=user, outcome="denied")
        session.commit()
        raise OtpInvalid("invalid or already used one-time code")
    audit.record(session, "mfa.verify", actor=user.username, target=user, factor=kind,
                 recovery_codes_left=len(user.recovery_codes or []))
    return kind
