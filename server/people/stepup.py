"""Re-asking for the second factor before sensitive changes (approval decisions, credential
edits) when the last one given is older than the policy's ``reauth_minutes``.

A web session remembers when it last gave a factor (``web_sessions.mfa_at``); a token, when
it was minted with one (``api_tokens.mfa_at``). Either may present a fresh code instead:
the ``X-TM-OTP`` header on the API, the step-up page in the UI. Accounts without TOTP are
not asked (those whose role requires it cannot get this far without enrolling).
"""
from __future__ import annotations

import re

from sqlalchemy.orm import Session

from server.core.models import User
from server.people import mfa

# Rules (API and pages) whose writes need a fresh factor.
_SENSITIVE = re.compile(r"(/(approve|reject|decide)$)|(^(/api/v1)?/credentials(/|$))")
HEADER = "X-TM-OTP"


def sensitive(method: str, rule: str) -> bool:
    return method not in ("GET", "HEAD", "OPTIONS") and bool(_SENSITIVE.search(rule))


def needed(session: Session, user: User, mfa_at) -> bool:
    """True when this user must give a second factor again before the action."""
    return mfa.enrolled(user) and not mfa.fresh(session, mfa_at)
