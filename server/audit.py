"""The tamper-evident audit trail.

Rows are appended inside the caller's transaction. Each row's ``hash`` is an HMAC (keyed
with the app secret, which is not in the database) over its content and the previous
row's hash, so editing or deleting any row breaks the chain from that row on.
Appends are serialised: an advisory lock on PostgreSQL, SQLite's single writer lock
(taken by the INSERT) elsewhere.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any, Iterable, Iterator

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from .models import AuditLog, utcnow

GENESIS = "0" * 64
_LOCK_KEY = 7_424_242
_key: bytes = b""


def init_audit(secret_key: str) -> None:
    global _key
    _key = hashlib.sha256(("audit:" + secret_key).encode()).digest()


def _digest(row: AuditLog) -> str:
    body = json.dumps(
        {
            "id": row.id,
            "ts": row.ts.isoformat(),
            "actor": row.actor,
            "action": row.action,
            "target_type": row.target_type,
            "target_id": row.target_id,
            "outcome": row.outcome,
            "detail": row.detail,
            "prev": row.prev_hash,
        },
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hmac.new(_key, body.encode(), hashlib.sha256).hexdigest()


def record(
    session: Session,
    action: str,
    *,
    actor: str | None = None,
    target: Any = None,
    target_type: str | None = None,
    target_id: Any = None,
    outcome: str = "ok",
    **detail: Any,
) -> AuditLog:
    """Append one audit row in the caller's transaction (committed with the change)."""
    if target is not None:
        target_type = target_type or type(target).__name__.lower()
        target_id = target_id if target_id is not None else getattr(target, "id", None)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    row = AuditLog(
        ts=utcnow(),
        actor=actor,
        action=action,
        target_type=target_type,
        target_id=None if target_id is None else str(target_id),
        outcome=outcome,
        detail=json.loads(json.dumps(detail, default=str)),
        prev_hash=GENESIS,
        hash="pending-" + uuid.uuid4().hex,
    )
    session.add(row)
    session.flush()  # takes the write lock on SQLite and assigns the id
    prev = session.execute(
        select(AuditLog.hash).where(AuditLog.id < row.id).order_by(AuditLog.id.desc()).limit(1)
    ).scalar()
    row.prev_hash = prev or GENESIS
    row.hash = _digest(row)
    session.flush()
    return row


def verify(rows: Iterable[AuditLog]) -> tuple[bool, AuditLog | None, str]:
    """Walk the chain in id order; return (ok, first bad row, why)."""
    prev = GENESIS
    count = 0
    for row in rows:
        count += 1
        if row.prev_hash != prev:
            return False, row, "previous hash does not match: a row before it was removed or altered"
        if _digest(row) != row.hash:
            return False, row, "content does not match its hash: the row was altered"
        prev = row.hash
    return True, None, f"{count} rows verified"


def iter_rows(session: Session, batch: int = 2000) -> Iterator[AuditLog]:
    last = 0
    while True:
        rows = session.execute(
            select(AuditLog).where(AuditLog.id > last).order_by(AuditLog.id).limit(batch)
        ).scalars().all()
        if not rows:
            return
        yield from rows
        last = rows[-1].id


def as_dict(row: AuditLog) -> dict[str, Any]:
    return {
        "id": row.id,
        "ts": row.ts.isoformat(),
        "actor": row.actor,
        "action": row.action,
        "target_type": row.target_type,
        "target_id": row.target_id,
        "outcome": row.outcome,
        "detail": row.detail,
        "hash": row.hash,
        "prev_hash": row.prev_hash,
    }
