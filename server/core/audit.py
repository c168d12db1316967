"""The tamper-evident audit trail.

Rows are appended inside the caller's transaction. Each row's ``hash`` is an HMAC (keyed
with the app secret, which is not in the database) over its content and the previous
row's hash, so editing or deleting any row breaks the chain from that row on.
Appends are serialised: an advisory lock on PostgreSQL, SQLite's single writer lock
(taken by the INSERT) elsewhere.

The chain alone cannot reveal that the *last* rows were deleted, so after each commit
that appended rows the head (id, hash) is also written outside the database: to a file
under ``instance/`` and to Redis (both only ever move forward). ``verify_trail`` checks
that every recorded head still exists with the same hash.

A later append must not hide such a truncation by chaining onto the shortened log (the
anchors would then simply move on to the new head). So every append compares the
database's head with the anchors first; when they disagree it records an ``audit.gap`` row
chained from the *anchored* hash, and ``verify`` names the gap for as long as the row exists.
"""
from __future__ import annotations

import fcntl
import hashlib
import hmac
import itertools
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

from sqlalchemy import event, func, insert, select, text
from sqlalchemy.orm import Session

from server.core.models import AuditLog, utcnow

log = logging.getLogger(__name__)

GENESIS = "0" * 64
GAP_ACTION = "audit.gap"
_LOCK_KEY = 7_424_242
_key: bytes = b""
_anchor_path: Path | None = None
# Only move the Redis head forward (concurrent committers may finish out of order), unless forced.
_REDIS_SET_HEAD = """
local cur = redis.call('HGET', KEYS[1], 'id')
if (not cur) or ARGV[4] == '1' or tonumber(cur) < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'hash', ARGV[2], 'mac', ARGV[3])
  return 1
end
return 0
"""


def init_audit(secret_key: str, anchor_path: Path | str | None = None) -> None:
    """Set the HMAC key; ``anchor_path`` is the file that keeps the head outside the database."""
    global _key, _anchor_path
    _key = hashlib.sha256(("audit:" + secret_key).encode()).digest()
    _anchor_path = Path(anchor_path) if anchor_path else None


def _digest(row: AuditLog | dict[str, Any]) -> str:
    """The row's HMAC: over its content and the previous row's hash (a row or its values)."""
    get: Callable[[str], Any] = row.get if isinstance(row, dict) else row.__getattribute__
    body = json.dumps(
        {
            "ts": get("ts").astimezone(timezone.utc).isoformat(),
            "actor": get("actor"),
            "action": get("action"),
            "target_type": get("target_type"),
            "target_id": get("target_id"),
            "outcome": get("outcome"),
            "detail": get("detail"),
            "prev": get("prev_hash"),
        },
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hmac.new(_key, body.encode(), hashlib.sha256).hexdigest()


def _values(
    action: str,
    *,
    actor: str | None = None,
    target: Any = None,
    target_type: str | None = None,
    target_id: Any = None,
    outcome: str = "ok",
    **detail: Any,
) -> dict[str, Any]:
    """The column values of one row, its hash still to be chained."""
    if target is not None:
        target_type = target_type or type(target).__name__.lower()
        target_id = target_id if target_id is not None else getattr(target, "id", None)
    return {
        "ts": utcnow(),
        "actor": actor,
        "action": action,
        "target_type": target_type,
        "target_id": None if target_id is None else str(target_id),
        "outcome": outcome,
        "detail": json.loads(json.dumps(detail, default=str)),
        "prev_hash": GENESIS,
        "hash": "pending-" + uuid.uuid4().hex,
    }


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
    """Append one audit row in the caller's transaction (committed with the change).

    Always recorded, even when the newest rows were found removed: then an ``audit.gap``
    row precedes it, chained from the anchored head, so the truncation is never hidden by
    later writes (see ``record_many``)."""
    return record_many(session, [(action, {"actor": actor, "target": target, "target_type": target_type,
                                           "target_id": target_id, "outcome": outcome, **detail})])[0]


def record_many(session: Session, entries: Sequence[tuple[str, dict[str, Any]]]) -> list[AuditLog]:
    """Append several rows, in order, in the caller's transaction; ``entries`` are
    (action, keyword arguments of ``record``).

    The first append of a transaction takes the append lock and reads the head: on
    PostgreSQL an advisory lock, then the head; on SQLite the first row's INSERT takes the
    write lock (that row is a placeholder until the head is known). Every row after that is
    chained from the cached head in Python, so any number of them is one multi-row INSERT.

    When the head disagrees with the anchors (rows were removed at the end), the rows are
    still recorded: a failed login must be logged whatever state the trail is in. Chaining
    them onto the shortened log would let the anchors move on and the truncation vanish,
    so an ``audit.gap`` row goes first, chained from the anchored hash (the real
    predecessor, which is gone) and naming the last row that remains and the anchored
    head. The gap stays visible forever: ``verify`` reports every such row, removing it
    breaks the chain, and it cannot be forged without the key. It is written once per
    truncation: a later append finds it acknowledging the anchor.
    """
    if not entries:
        return []
    values = [_values(action, **kw) for action, kw in entries]
    tx = session.get_nested_transaction() or session.get_transaction()
    head = session.info.get("audit_head")
    placeholder: AuditLog | None = None
    gap_added = False
    if head is None or session.info.get("audit_tx") is not tx:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
            last = session.execute(select(AuditLog.id, AuditLog.hash).order_by(AuditLog.id.desc()).limit(1)).first()
        else:
            placeholder = AuditLog(**values[0])
            session.add(placeholder)
            session.flush()  # takes the write lock and assigns the id
            last = session.execute(
                select(AuditLog.id, AuditLog.hash).where(AuditLog.id < placeholder.id)
                .order_by(AuditLog.id.desc()).limit(1)
            ).first()
        head = (last.id, last.hash) if last else (0, GENESIS)
        gap = _gap(session, head)
        if gap is not None:
            values.insert(0, gap)
            head = (head[0], gap["prev_hash"])
            gap_added = True
            session.info["audit_gap"] = tx
    _chain(values, head[1])
    out: list[AuditLog] = []
    if placeholder is not None:
        first = values.pop(0)
        for key, value in first.items():
            setattr(placeholder, key, value)
        session.flush()
        head = (placeholder.id, placeholder.hash)
        out.append(placeholder)
    if values:
        # No ordered RETURNING needed (SQLite could not batch it): each row comes back with
        # its unique hash. The chain is checked in id order, so the ids must follow it.
        inserted = {r.hash: r for r in session.scalars(insert(AuditLog).returning(AuditLog), values,
                                                       execution_options={"populate_existing": True})}
        rows = [inserted[v["hash"]] for v in values]
        ids = [head[0], *(r.id for r in rows)]
        if any(a >= b for a, b in itertools.pairwise(ids)):
            raise RuntimeError("audit rows were not numbered in the order they were chained")
        out += rows
    session.flush()  # as ever: the caller's pending changes are written with its audit rows
    session.info["audit_head"] = (out[-1].id, out[-1].hash)  # written out by _after_commit
    session.info["audit_tx"] = tx
    return out[1:] if gap_added else out  # the caller gets back the rows it asked for


def _chain(values: list[dict[str, Any]], prev_hash: str) -> None:
    """Set each row's previous hash and hash, in order, from ``prev_hash``."""
    for v in values:
        v["prev_hash"] = prev_hash
        v["hash"] = prev_hash = _digest(v)


def _gap(session: Session, head: tuple[int, str]) -> dict[str, Any] | None:
    """The values of an ``audit.gap`` row when the database's head disagrees with an
    anchor (the anchored row is gone or differs), else None. A gap row that already
    acknowledges that anchor (recorded by an append whose anchor write is still to come,
    or failed) means the gap is known: no second row."""
    for where, anchor in sorted(anchors(), key=lambda a: -a[1]["id"]):
        if anchor.get("corrupt") or not hmac.compare_digest(anchor["mac"], _head_mac(anchor["id"], anchor["hash"])):
            continue  # a forged or broken anchor proves nothing; verify reports it
        if (anchor["id"], anchor["hash"]) == head:
            return None
        if anchor["id"] < head[0]:
            found = session.execute(select(AuditLog.hash).where(AuditLog.id == anchor["id"])).scalar()
            if found == anchor["hash"]:
                return None
        if _acknowledged(session, anchor):
            return None
        log.error("audit trail: rows after id %s are missing (the head anchor in %s says row %s); "
                  "recording an audit.gap row", head[0], where, anchor["id"])
        gap = _values(GAP_ACTION, outcome="error", last_row=head[0], anchored_row=anchor["id"],
                      anchored_hash=anchor["hash"], anchor=where)
        gap["prev_hash"] = anchor["hash"]
        return gap
    return None


def _acknowledged(session: Session, anchor: dict[str, Any]) -> bool:
    detail = session.execute(
        select(AuditLog.detail).where(AuditLog.action == GAP_ACTION).order_by(AuditLog.id.desc()).limit(1)
    ).scalar()
    if not detail:
        return False
    return bool(detail.get("anchored_row") == anchor["id"] and detail.get("anchored_hash") == anchor["hash"])


# ---------------------------------------------------------------- head anchor


def _head_mac(row_id: int, row_hash: str) -> str:
    return hmac.new(_key, f"head:{row_id}:{row_hash}".encode(), hashlib.sha256).hexdigest()


def _redis_key() -> str:
    # Per installation (the key derives from its secret), so installs sharing a Redis don't collide.
    return "taskmanager:audit:head:" + hmac.new(_key, b"redis-key", hashlib.sha256).hexdigest()[:16]


def _write_file_anchor(path: Path, row_id: int, row_hash: str, force: bool = False) -> None:
    lock_fd = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        current = _read_file_anchor(path)
        if not force and current is not None and current["id"] >= row_id:
            return
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"id": row_id, "hash": row_hash, "mac": _head_mac(row_id, row_hash)}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        os.close(lock_fd)


def _read_file_anchor(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
        return {"id": int(data["id"]), "hash": str(data["hash"]), "mac": str(data.get("mac", ""))}
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return {"id": -1, "hash": "", "mac": "", "corrupt": True}


def _write_anchor(row_id: int, row_hash: str, force: bool = False) -> None:
    """Publish a committed head; ``force`` (after an ``audit.gap`` row) may move it back,
    since on SQLite the ids of removed rows are handed out again."""
    if _anchor_path is not None:
        try:
            _write_file_anchor(_anchor_path, row_id, row_hash, force)
        except OSError as exc:
            log.error("could not write the audit head anchor %s: %s", _anchor_path, exc)
    try:
        from server.core.redis_conn import redis

        redis().eval(_REDIS_SET_HEAD, 1, _redis_key(), row_id, row_hash, _head_mac(row_id, row_hash), int(force))
    except Exception as exc:  # noqa: BLE001 - Redis is a second anchor, not a dependency of the write
        log.warning("could not write the audit head anchor to Redis: %s", exc)


def anchors() -> list[tuple[str, dict[str, Any]]]:
    """Every head recorded outside the database, as (where, {"id","hash","mac"})."""
    found: list[tuple[str, dict[str, Any]]] = []
    if _anchor_path is not None:
        data = _read_file_anchor(_anchor_path)
        if data is not None:
            found.append((f"file {_anchor_path}", data))
    try:
        from server.core.redis_conn import redis

        raw = cast(dict[bytes, bytes], redis().hgetall(_redis_key()))
        if raw:
            found.append(("redis", {"id": int(raw[b"id"]), "hash": raw[b"hash"].decode(), "mac": raw.get(b"mac", b"").decode()}))
    except Exception as exc:  # noqa: BLE001
        log.warning("could not read the audit head anchor from Redis: %s", exc)
    return found


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    session.info.pop("audit_tx", None)
    forced = session.info.pop("audit_gap", None) is not None
    head = session.info.pop("audit_head", None)
    if head is not None:
        row_id, row_hash = head
        _write_anchor(row_id, row_hash, force=forced)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop("audit_tx", None)
    session.info.pop("audit_head", None)
    session.info.pop("audit_gap", None)


def verify(rows: Iterable[AuditLog]) -> tuple[bool, AuditLog | None, str]:
    """Walk the chain in id order; return (ok, first bad row, why)."""
    walk = _walk(rows)
    if walk.gaps or walk.bad is not None:
        return _verdict(walk.gaps, walk.bad, walk.why)
    return True, None, f"{walk.count} rows verified"


@dataclass
class _Walk:
    count: int
    gaps: list[tuple[AuditLog, str]]
    bad: AuditLog | None = None  # the first row that breaks the chain (not a recorded gap)
    why: str = ""


def _walk(rows: Iterable[AuditLog]) -> _Walk:
    """An intact ``audit.gap`` row (see ``record_many``) is noted and the walk goes on from
    it, so an alteration after a known gap is still found; any other break ends the walk."""
    prev = GENESIS
    walk = _Walk(0, [])
    for row in rows:
        walk.count += 1
        if row.prev_hash != prev and _is_gap(row):
            walk.gaps.append((row, _gap_message(row)))
        elif row.prev_hash != prev:
            walk.bad, walk.why = row, "previous hash does not match: a row before it was removed or altered"
            return walk
        elif _digest(row) != row.hash:
            walk.bad, walk.why = row, "content does not match its hash: the row was altered"
            return walk
        prev = row.hash
    return walk


def _is_gap(row: AuditLog) -> bool:
    detail = row.detail if isinstance(row.detail, dict) else {}
    return (row.action == GAP_ACTION and row.prev_hash == detail.get("anchored_hash")
            and hmac.compare_digest(_digest(row), row.hash))


def _gap_message(row: AuditLog) -> str:
    d = row.detail
    return (f"rows after id {d.get('last_row')} are missing: the trail had reached row {d.get('anchored_row')} "
            f"(head anchor in {d.get('anchor')}) when row {row.id} was written; row {row.id} records the gap")


def _verdict(gaps: list[tuple[AuditLog, str]], bad: AuditLog | None, why: str) -> tuple[bool, AuditLog | None, str]:
    """The first problem in id order names the row; every problem is in the message."""
    if not gaps:
        return False, bad, why
    messages = [m for _, m in gaps] + ([f"row {bad.id}: {why}"] if bad is not None else [])
    return False, gaps[0][0], "; ".join(messages)


@dataclass
class TrailCheck:
    ok: bool
    bad_id: int | None  # the first bad (altered, or missing) row
    why: str
    rows: int


def verify_trail(session: Session) -> TrailCheck:
    """The chain (no row altered or removed before the head, no recorded gap) plus the
    anchors (no rows removed at the end)."""
    walk = _walk(iter_rows(session))
    if walk.bad is not None:
        ok, bad, why = _verdict(walk.gaps, walk.bad, walk.why)
        return TrailCheck(False, bad.id if bad else None, why, 0)
    count = session.execute(select(func.count(AuditLog.id))).scalar() or 0
    tail = _anchor_problem(session)
    if not walk.gaps:
        if tail is None:
            return TrailCheck(True, None, f"{count} rows verified", count)
        return TrailCheck(False, tail[0], tail[1], count)
    _, bad, why = _verdict(walk.gaps, None, "")
    return TrailCheck(False, bad.id if bad else None, why + (f"; {tail[1]}" if tail else ""), count)


def _anchor_problem(session: Session) -> tuple[int | None, str] | None:
    """(first missing or differing row, why) when an anchor shows the end was cut, else None."""
    last_id = session.execute(select(func.max(AuditLog.id))).scalar() or 0
    for where, head in anchors():
        if head.get("corrupt") or not hmac.compare_digest(head["mac"], _head_mac(head["id"], head["hash"])):
            return None, f"the head anchor in {where} is corrupt or was forged"
        row = session.get(AuditLog, head["id"])
        if row is None:
            first_missing = last_id + 1 if head["id"] > last_id else head["id"]
            return first_missing, (f"row {first_missing} is missing: the head anchor in {where} says the trail "
                                   f"reaches row {head['id']}, the database ends at row {last_id or 'none'} "
                                   f"(rows were removed)")
        if row.hash != head["hash"]:
            return row.id, f"row {row.id} differs from the head anchor in {where}"
    return None


def query(
    session: Session,
    *,
    actor: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
):
    """A filtered ``select(AuditLog)`` (newest first); ``action`` ending in '.' or '*' matches a prefix."""
    q = select(AuditLog)
    if actor:
        q = q.where(AuditLog.actor == actor)
    if action:
        if action.endswith("*") or action.endswith("."):
            prefix = action.rstrip("*")
            q = q.where(AuditLog.action.startswith(prefix, autoescape=True))
        else:
            q = q.where(AuditLog.action == action)
    if outcome:
        q = q.where(AuditLog.outcome == outcome)
    if target_type:
        q = q.where(AuditLog.target_type == target_type)
    if target_id:
        q = q.where(AuditLog.target_id == str(target_id))
    if since:
        q = q.where(AuditLog.ts >= since)
    if until:
        q = q.where(AuditLog.ts < until)
    return q.order_by(AuditLog.id.desc())


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
        "ts": row.ts.astimezone(timezone.utc).isoformat(),
        "actor": row.actor,
        "action": row.action,
        "target_type": row.target_type,
        "target_id": row.target_id,
        "outcome": row.outcome,
        "detail": row.detail,
        "hash": row.hash,
        "prev_hash": row.prev_hash,
    }


@event.listens_for(Session, "after_soft_rollback")
def _after_soft_rollback(session: Session, previous_transaction) -> None:
    # A rolled-back SAVEPOINT took its audit rows with it: forget a head it appended.
    if session.info.get("audit_tx") is previous_transaction:
        session.info.pop("audit_tx", None)
        session.info.pop("audit_head", None)
    if session.info.get("audit_gap") is previous_transaction:
        session.info.pop("audit_gap", None)
