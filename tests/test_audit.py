"""The tamper-evident audit trail: chain + head anchors, the CLI verdict, the HTTP API."""
from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select, text

from conftest import REPO
from server.core import audit, db
from server.core.models import AuditLog


def _rows(session) -> list[AuditLog]:
    return session.execute(select(AuditLog).order_by(AuditLog.id)).scalars().all()


def _verify_cli(env: dict[str, str]) -> subprocess.CompletedProcess:
    """The real command an operator types."""
    return subprocess.run(
        [str(REPO / ".venv/bin/flask"), "--app", "wsgi", "audit", "verify"],
        cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def trail(api, api_as, session):
    """A dozen real rows: logins (good and bad), users, tokens, a policy."""
    client = api.client
    assert client.post("/api/v1/auth/token", json={"username": "admin", "password": "wrong-password"}).status_code == 401
    assert client.post("/api/v1/auth/token", json={"username": "admin", "password": "admin-password-1"}).status_code == 201
    api_as("ivy", "auditor")
    assert api.post("/api/v1/users", {"username": "dora", "role": "operator", "password": "dora-password"})[0] == 201
    assert api.post("/api/v1/policies", {"name": "p1", "users": ["dora"]})[0] == 201
    session.expire_all()
    # Plain copies: the tests delete rows behind the session's back.
    return [SimpleNamespace(id=r.id, hash=r.hash, prev_hash=r.prev_hash, ts=r.ts) for r in _rows(session)]


def _sql(session, statement: str, **params) -> None:
    session.execute(text(statement), params)
    session.commit()
    session.expire_all()


def test_intact_trail_verifies_with_the_cli(trail, env):
    assert len(trail) >= 8
    assert [r.prev_hash for r in trail[1:]] == [r.hash for r in trail[:-1]]
    proc = _verify_cli(env)
    assert proc.returncode == 0, proc.stderr
    assert f"{len(trail)} rows verified" in proc.stdout


def test_edited_row_is_named(trail, session, env):
    victim = trail[len(trail) // 2]
    _sql(session, "UPDATE audit_log SET detail = :d WHERE id = :i", d=json.dumps({"role": "admin"}), i=victim.id)
    proc = _verify_cli(env)
    assert proc.returncode == 1
    assert f"BROKEN at row {victim.id}:" in proc.stderr and "altered" in proc.stderr


def test_edited_actor_or_time_is_caught(trail, session, app):
    check = audit.verify_trail(session)
    assert check.ok
    _sql(session, "UPDATE audit_log SET actor = 'someone-else' WHERE id = :i", i=trail[2].id)
    check = audit.verify_trail(session)
    assert not check.ok and check.bad_id == trail[2].id


def test_deleted_middle_row_is_named(trail, session, env):
    victim = trail[3]
    _sql(session, "DELETE FROM audit_log WHERE id = :i", i=victim.id)
    proc = _verify_cli(env)
    assert proc.returncode == 1
    assert f"BROKEN at row {trail[4].id}:" in proc.stderr and "removed" in proc.stderr


def test_deleted_first_row_is_named(trail, session):
    _sql(session, "DELETE FROM audit_log WHERE id = :i", i=trail[0].id)
    check = audit.verify_trail(session)
    assert not check.ok and check.bad_id == trail[1].id


def test_deleted_last_rows_are_caught_by_the_anchor(trail, session, env):
    last = trail[-1]
    _sql(session, "DELETE FROM audit_log WHERE id = :i", i=last.id)
    # The chain that remains is internally consistent...
    assert audit.verify(_rows(session))[0] is True
    # ...but the head recorded outside the database is gone.
    proc = _verify_cli(env)
    assert proc.returncode == 1
    assert f"BROKEN at row {last.id}:" in proc.stderr and "missing" in proc.stderr
    # Several last rows, and each anchor on its own (file only; Redis only) still catches it.
    _sql(session, "DELETE FROM audit_log WHERE id >= :i", i=trail[-3].id)
    from server.core.redis_conn import redis

    saved = redis().hgetall(audit._redis_key())
    redis().delete(audit._redis_key())
    check = audit.verify_trail(session)
    assert not check.ok and check.bad_id == trail[-3].id and "file" in check.why
    redis().hset(audit._redis_key(), mapping=saved)
    audit._anchor_path.unlink()
    check = audit.verify_trail(session)
    assert not check.ok and "redis" in check.why


def test_anchor_file_is_private_and_forgery_is_detected(trail, session):
    path: Path = audit._anchor_path
    assert path.exists() and (path.stat().st_mode & 0o777) == 0o600
    head = json.loads(path.read_text())
    assert head["id"] == trail[-1].id and head["hash"] == trail[-1].hash
    path.write_text(json.dumps({"id": trail[2].id, "hash": trail[2].hash, "mac": "0" * 64}))
    check = audit.verify_trail(session)
    assert not check.ok and "forged" in check.why


def test_anchor_only_moves_forward(trail, session):
    """A slow committer finishing after a newer one must not pull the head back."""
    newest = trail[-1]
    audit._write_anchor(trail[1].id, trail[1].hash)
    assert json.loads(audit._anchor_path.read_text())["id"] == newest.id
    from server.core.redis_conn import redis

    assert int(redis().hget(audit._redis_key(), "id")) == newest.id


def test_rolled_back_rows_do_not_move_the_anchor(trail, session):
    audit.record(session, "test.rollback", actor="x")
    session.rollback()
    audit.record(session, "test.other", actor="y")  # a commit later must not publish the rolled-back head
    session.commit()
    assert audit.verify_trail(session).ok


def test_concurrent_appends_keep_one_chain(app, session):
    """Threads with their own sessions append at once: one unbroken chain, every row present."""
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            with app.app_context():
                for i in range(8):
                    with db.transaction() as s:
                        audit.record(s, "test.concurrent", actor=f"t{n}", i=i)
                db.session.remove()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    session.expire_all()
    assert session.execute(select(func.count(AuditLog.id)).where(AuditLog.action == "test.concurrent")).scalar() == 32
    check = audit.verify_trail(session)
    assert check.ok, check.why


def test_verification_does_not_depend_on_the_database_timezone(trail, session):
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET TIME ZONE 'Asia/Kolkata'"))
        session.expire_all()
    assert audit.verify_trail(session).ok


def test_audit_api_filters_pages_and_roles(trail, api, api_as, session):
    ivy = api_as("ivy2", "auditor")
    status, page = ivy.get("/api/v1/audit?per_page=3")
    assert status == 200 and len(page["items"]) == 3 and page["total"] == len(_rows(session))
    ids = [r["id"] for r in page["items"]]
    assert ids == sorted(ids, reverse=True)  # newest first
    status, page = ivy.get("/api/v1/audit?action=auth.login&outcome=denied")
    assert status == 200 and [r["detail"]["reason"] for r in page["items"]] == ["bad password"]
    assert page["items"][0]["actor"] == "admin" and "hash" in page["items"][0]
    status, page = ivy.get("/api/v1/audit?action=user.*")
    assert {r["action"] for r in page["items"]} == {"user.create"}
    status, page = ivy.get("/api/v1/audit?actor=admin&action=policy.create")
    assert [r["detail"]["policy"]["name"] for r in page["items"]] == ["p1"]
    today = trail[0].ts.date().isoformat()
    assert ivy.get(f"/api/v1/audit?from={today}&to={today}")[1]["total"] >= len(trail)
    assert ivy.get("/api/v1/audit?from=2001-01-01&to=2001-01-02")[1]["total"] == 0
    assert ivy.get("/api/v1/audit?from=yesterday")[0] == 422
    assert ivy.get("/api/v1/audit?page=0")[0] == 422
    # Only admins and auditors read it.
    for role in ("operator", "approver", "author"):
        assert api_as(f"no-{role}", role).get("/api/v1/audit")[0] == 403
    status, check = ivy.get("/api/v1/audit/verify")
    assert status == 200 and check["ok"] is True and check["bad_row"] is None


def test_export_jsonl_is_complete_and_checkable(trail, api, session):
    resp = api.client.get("/api/v1/audit/export.jsonl", headers={"Authorization": f"Bearer {api.token}"})
    assert resp.status_code == 200 and resp.mimetype == "application/x-ndjson"
    assert "attachment" in resp.headers["Content-Disposition"]
    lines = [json.loads(line) for line in resp.get_data(as_text=True).splitlines()]
    ids = [row["id"] for row in lines]
    assert ids == sorted(ids) and len(lines) >= len(trail)
    assert [row["prev_hash"] for row in lines[1:]] == [row["hash"] for row in lines[:-1]]
    # The export itself is an audited event.
    session.expire_all()
    assert session.execute(select(AuditLog).where(AuditLog.action == "audit.export")).scalar_one().actor == "admin"
    filtered = api.client.get("/api/v1/audit/export.jsonl?action=user.create",
                              headers={"Authorization": f"Bearer {api.token}"}).get_data(as_text=True)
    assert {json.loads(line)["action"] for line in filtered.splitlines()} == {"user.create"}


def test_cli_export_writes_json_lines(trail, app, tmp_path):
    out = tmp_path / "audit.jsonl"
    result = app.test_cli_runner().invoke(args=["audit", "export", "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(trail) and rows[0]["prev_hash"] == audit.GENESIS


def test_many_rows_in_one_transaction_and_a_rolled_back_savepoint_keep_the_chain(app, session):
    """Rows after the first in a transaction are chained from the cached head; a
    SAVEPOINT that is rolled back takes its rows with it and the chain stays whole."""
    from server.core import audit as audit_mod

    for i in range(5):
        audit_mod.record(session, "test.burst", actor="t", n=i)
    nested = session.begin_nested()
    audit_mod.record(session, "test.savepoint", actor="t")
    nested.rollback()
    audit_mod.record(session, "test.after", actor="t")
    session.commit()
    rows = list(audit_mod.iter_rows(session))
    assert [r.action for r in rows].count("test.savepoint") == 0
    ok, bad, why = audit_mod.verify(rows)
    assert ok, why
    assert rows[-1].action == "test.after" and rows[-1].prev_hash == rows[-2].hash


def test_record_many_chains_a_batch_and_a_rolled_back_savepoint_keeps_the_chain(app, session):
    """The batch form: rows in order, one chain with single appends around it, a batch in a
    rolled-back SAVEPOINT gone without a trace."""
    audit.record(session, "test.single", actor="t")
    first = audit.record_many(session, [("test.batch", {"actor": "t", "n": i}) for i in range(4)])
    nested = session.begin_nested()
    doomed = audit.record_many(session, [("test.savepoint", {"actor": "t", "n": i}) for i in range(3)])
    nested.rollback()  # (SQLite hands its ids out again; ``doomed`` still holds the old objects)
    after = audit.record_many(session, [("test.after", {"actor": "t", "n": i, "target_id": 7}) for i in range(3)])
    audit.record(session, "test.last", actor="t")
    session.commit()
    assert [r.detail["n"] for r in first] == [0, 1, 2, 3] and [r.id for r in first] == sorted(r.id for r in first)
    rows = list(audit.iter_rows(session))
    assert [r.action for r in rows] == ["test.single"] + ["test.batch"] * 4 + ["test.after"] * 3 + ["test.last"]
    assert [r.detail for r in rows if r.action == "test.after"] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [r.action for r in after] == ["test.after"] * 3 and all(r.target_id == "7" for r in after)
    assert len(doomed) == 3
    check = audit.verify_trail(session)
    assert check.ok, check.why
    audit.record_many(session, [("test.new_tx", {"actor": "t"}), ("test.new_tx", {"actor": "t"})])
    session.commit()
    check = audit.verify_trail(session)
    assert check.ok and check.rows == len(rows) + 2, check.why


# --- the tail: a truncation stays visible after later writes ----------------------------------


def _failed_logins(base: str, n: int) -> None:
    import requests

    for _ in range(n):
        resp = requests.post(f"{base}/api/v1/auth/token", json={"username": "admin", "password": "not-it"}, timeout=30)
        assert resp.status_code in (401, 429), resp.text


def _gap_rows(session) -> list[AuditLog]:
    session.expire_all()
    return session.execute(select(AuditLog).where(AuditLog.action == audit.GAP_ACTION)
                           .order_by(AuditLog.id)).scalars().all()


def test_truncated_tail_stays_detected_after_later_writes(trail, api, session, env, live_server):
    """Delete the newest rows in SQL, then anyone's failed logins (over HTTP) and other writes:
    the new rows do not chain onto the shortened log, and ``audit verify`` names the gap."""
    import requests

    kept = trail[-4]
    _sql(session, "DELETE FROM audit_log WHERE id > :i", i=kept.id)
    _failed_logins(live_server, 5)
    resp = requests.post(f"{live_server}/api/v1/users", json={"username": "late", "role": "operator",
                                                        "password": "late-password-1"},
                         headers={"Authorization": f"Bearer {api.token}"}, timeout=30)
    assert resp.status_code == 201, resp.text
    gaps = _gap_rows(session)
    assert len(gaps) == 1, "one gap row per truncation, not one per write"
    gap = gaps[0]
    assert gap.detail["last_row"] == kept.id and gap.detail["anchored_row"] == trail[-1].id
    assert gap.prev_hash == trail[-1].hash  # chained from the anchored head, not from the shortened log
    later = session.execute(select(AuditLog).where(AuditLog.id > gap.id).order_by(AuditLog.id)).scalars().all()
    assert [r.action for r in later].count("auth.login") >= 4 and later[-1].action == "user.create"

    proc = _verify_cli(env)
    assert proc.returncode == 1, proc.stdout
    assert f"rows after id {kept.id} are missing" in proc.stderr and f"BROKEN at row {gap.id}:" in proc.stderr
    status, check = api.get("/api/v1/audit/verify")
    assert status == 200 and check["ok"] is False and f"rows after id {kept.id} are missing" in check["message"]


def test_a_second_truncation_after_a_gap_is_a_second_gap(trail, session, env, live_server):
    kept = trail[-3]
    _sql(session, "DELETE FROM audit_log WHERE id > :i", i=kept.id)
    _failed_logins(live_server, 2)
    first_gap = _gap_rows(session)[0]
    newest = session.execute(select(func.max(AuditLog.id))).scalar()
    _sql(session, "DELETE FROM audit_log WHERE id = :i", i=newest)  # a login after the gap, removed too
    _failed_logins(live_server, 4)
    gaps = _gap_rows(session)
    assert [g.id for g in gaps][0] == first_gap.id and len(gaps) == 2
    assert gaps[1].detail["last_row"] == newest - 1 and gaps[1].detail["anchored_row"] == newest
    proc = _verify_cli(env)
    assert proc.returncode == 1
    assert f"rows after id {kept.id} are missing" in proc.stderr
    assert f"rows after id {newest - 1} are missing" in proc.stderr


def test_an_edit_after_a_gap_is_still_found(trail, session, live_server):
    _sql(session, "DELETE FROM audit_log WHERE id > :i", i=trail[-2].id)
    _failed_logins(live_server, 3)
    victim = session.execute(select(func.max(AuditLog.id))).scalar()
    _sql(session, "UPDATE audit_log SET actor = 'nobody' WHERE id = :i", i=victim)
    check = audit.verify_trail(session)
    assert not check.ok and "are missing" in check.why and f"row {victim}:" in check.why and "altered" in check.why


def test_an_untouched_trail_with_failed_logins_over_http_verifies(trail, session, env, live_server):
    _failed_logins(live_server, 6)
    assert _gap_rows(session) == []
    logins = session.execute(select(func.count()).where(AuditLog.action == "auth.login", AuditLog.id > trail[-1].id))
    assert logins.scalar() >= 4
    proc = _verify_cli(env)
    assert proc.returncode == 0, proc.stderr
    assert f"{len(_rows(session))} rows verified" in proc.stdout
