"""API token scopes: what a token may be used for, never more than its owner may do.

A token carries a subset of ``SCOPES``; a request needs one scope, read off its method and
route (``needed``): reading (and testing a host's reachability) is ``read``; starting,
cancelling or scheduling runs is ``execute``; deciding a request is ``approve``; every other change (hosts,
credentials, tasks, users, policies, settings...) is ``admin``. The owner's role bounds the
scopes a token may hold (``ROLE_SCOPES``), and the role's own checks still run afterwards:
a scope narrows what a token can do, it never widens it.

One's own account (``/me/...``: MFA, sessions; ``/tokens``) is ``account``: a token may
change it only when it holds every scope its owner has, so a narrow token that leaks
cannot enrol a second factor or mint a wider token.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

from server.core.errors import Forbidden, ValidationError

SCOPES = ("read", "execute", "approve", "admin")
ACCOUNT = "account"

ROLE_SCOPES: dict[str, tuple[str, ...]] = {
    "admin": SCOPES,
    "author": SCOPES,
    # Anyone may be named approver in a policy, and a policy may let an operator or an
    # approver edit a task ("admin" covers every change): the role's and the policies' own
    # checks decide the rest.
    "operator": SCOPES,
    "approver": SCOPES,
    "auditor": ("read",),
}

_APPROVE = re.compile(r"/(approve|reject)$")
_EXECUTE = re.compile(
    r"(/tasks/<int:task_id>/executions|/executions/<int:execution_id>/(cancel|relaunch|dry-run)"
    r"|/projects/<int:project_id>/sync)$")
# Writes by method only: a reachability test changes nothing (auditors may run it too).
_READ_POSTS = re.compile(r"/hosts/<int:host_id>/test$")
_SCHEDULES = re.compile(r"^/api/v1/(tasks/<int:task_id>/)?schedules(/<int:schedule_id>)?$")
_ACCOUNT = re.compile(r"^/api/v1/(me(/.*)?|tokens(/<int:token_id>)?)$")


def needed(method: str, rule: str) -> str:
    """The scope a request with this method on this route rule needs."""
    if _ACCOUNT.match(rule) and method not in ("GET", "HEAD", "OPTIONS"):
        return ACCOUNT
    if method in ("GET", "HEAD", "OPTIONS") or _READ_POSTS.search(rule):
        return "read"
    if _APPROVE.search(rule):
        return "approve"
    if _EXECUTE.search(rule) or _SCHEDULES.match(rule):
        return "execute"
    return "admin"


def of_role(role: str) -> tuple[str, ...]:
    return ROLE_SCOPES.get(role, ())


def effective(token_scopes: list[str] | None, role: str) -> set[str]:
    """What a token may do now: its scopes within what the owner's role holds today (a
    demoted owner's tokens shrink with him). ``None`` (older tokens): the role's scopes."""
    held = set(of_role(role))
    return held if token_scopes is None else held & set(token_scopes)


def allows(token_scopes: list[str] | None, role: str, scope: str) -> bool:
    have = effective(token_scopes, role)
    if scope == ACCOUNT:
        return have >= set(of_role(role))
    return scope in have


def require(token_scopes: list[str] | None, role: str, scope: str) -> None:
    """Refuse a call outside the token's scopes. A scope the role never holds is left to the
    role's own checks, which refuse it as they did before scopes (``forbidden``)."""
    if scope != ACCOUNT and scope not in of_role(role):
        return
    if not allows(token_scopes, role, scope):
        what = ("a token holding every scope of your role" if scope == ACCOUNT
                else f"a token with the '{scope}' scope")
        raise Forbidden(f"this call needs {what}; this token has: {', '.join(sorted(effective(token_scopes, role))) or 'none'}",
                        code="insufficient_scope")


def parse(value: Any, role: str, *, within: Iterable[str] | None = None) -> list[str] | None:
    """Validate requested scopes: a non-empty list of known names the role holds (and, when
    minted with another token, that token holds). ``None`` stays None: all of the role's."""
    if value is None:
        return None if within is None else sorted(set(within))
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValidationError(f"'scopes' must be a non-empty list of: {', '.join(SCOPES)}", field="scopes")
    unknown = sorted(set(value) - set(SCOPES))
    if unknown:
        raise ValidationError(f"unknown scope(s): {', '.join(unknown)} (known: {', '.join(SCOPES)})", field="scopes")
    beyond = sorted(set(value) - set(of_role(role)))
    if beyond:
        raise ValidationError(f"role '{role}' does not hold the scope(s): {', '.join(beyond)}", field="scopes")
    if within is not None and set(value) - set(within):
        raise ValidationError("a token cannot mint a token with scopes it does not hold itself", field="scopes")
    return [s for s in SCOPES if s in value]
