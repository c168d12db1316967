"""Testing a host's connection: the service behind the API and the host page button.

The test logs in for real (protocols.test_connection), so using a credential needs the
right to edit hosts; without one only the handshake is checked, which anyone who may see
the host may do. Every test is audited (who tried which credential against which host).
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.people import access
from server.core import audit
from server.runs import protocols
from server.core.errors import NotFound, ValidationError
from server.core.models import Credential, Host, User, utcnow

MAX_REASON = 1000


def find_credential(session: Session, name: Any) -> Credential | None:
    if name in (None, ""):
        return None
    if not isinstance(name, str):
        raise ValidationError("'credential' must be the name of a credential", field="credential")
    cred = session.execute(select(Credential).where(Credential.name == name)).scalar_one_or_none()
    if cred is None:
        raise NotFound(f"credential {name!r} does not exist")
    return cred


def test_host(session: Session, user: User, host: Host, credential_name: Any = None,
              timeout: float = protocols.TIMEOUT_S) -> dict[str, Any]:
    """Run the connection test and audit it; returns the API document."""
    access.require(user, "hosts.view")
    access.require_host(session, user, host)
    credential = find_credential(session, credential_name)
    if credential is not None:
        access.require(user, "hosts.edit")
    started = utcnow()
    result = protocols.test_connection(host, credential, timeout=timeout)
    reason = result.reason[:MAX_REASON]
    audit.record(session, "host.test_connection", actor=user.username, target=host,
                 outcome="ok" if result.ok else "failed", protocol=host.protocol,
                 credential=credential.name if credential else None, reason=reason)
    return {
        "ok": result.ok,
        "reason": reason,
        "protocol": host.protocol,
        "host": host.name,
        "address": host.address,
        "port": protocols.port_of(host) if host.protocol in protocols.PROTOCOLS else host.port,
        "credential": credential.name if credential else None,
        "tested_at": started.isoformat(),
        "details": _jsonable(result.details),
    }


test_host.__test__ = False  # not a pytest test

BULK_WORKERS = 8


def test_hosts(session: Session, user: User, hosts: list[Host],
               timeout: float = protocols.TIMEOUT_S) -> list[dict[str, Any]]:
    """The connection test (no credential: reachability and handshake) of several hosts at
    once, a few in parallel so that twenty dead hosts take one timeout, not twenty; each
    test audited as ``test_host`` does."""
    from concurrent.futures import ThreadPoolExecutor

    access.require(user, "hosts.view")
    for host in hosts:
        access.require_host(session, user, host)
    with ThreadPoolExecutor(max_workers=BULK_WORKERS) as pool:
        results = list(pool.map(lambda h: protocols.test_connection(h, None, timeout=timeout), hosts))
    out = []
    for host, result in zip(hosts, results, strict=True):
        reason = result.reason[:MAX_REASON]
        audit.record(session, "host.test_connection", actor=user.username, target=host,
                     outcome="ok" if result.ok else "failed", protocol=host.protocol, credential=None, reason=reason)
        out.append({"host": host.name, "ok": result.ok, "reason": reason})
    return out


test_hosts.__test__ = False


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
