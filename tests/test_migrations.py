"""The Alembic migrations build exactly the schema the models describe, on both backends."""
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from server.core import db
from server.core.db import Base


def test_upgrade_from_empty_matches_models(env):
    from server import create_app
    from server.core.migrate import upgrade

    create_app({"TESTING": True})
    engine = db.engine()
    Base.metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    upgrade("head")
    upgrade("head")  # idempotent
    assert "executions" in inspect(engine).get_table_names()
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == [], f"models and migrations differ: {diff}"


def _insert(conn, table: str, **values):
    """Insert a row written the way revision 0003 stored it: every NOT NULL column without a
    value gets a plain one of its type, so the test names only what the migration reads."""
    import json
    from datetime import datetime, timezone

    from sqlalchemy import JSON, Boolean, DateTime, Integer, String, Text, text

    for col in inspect(conn).get_columns(table):
        if col["name"] in values or col["nullable"] or col.get("autoincrement") is True or col["name"] == "id":
            continue
        kind = col["type"]
        values[col["name"]] = (0 if isinstance(kind, Integer) else False if isinstance(kind, Boolean)
                               else datetime(2030, 1, 1, tzinfo=timezone.utc).replace(tzinfo=None)
                               if isinstance(kind, DateTime) else "{}" if isinstance(kind, JSON)
                               else "x" if isinstance(kind, String | Text) else None)
    values = {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in values.items()}
    names = ", ".join(values)
    conn.execute(text(f"INSERT INTO {table} ({names}) VALUES ({', '.join(':' + n for n in values)})"), values)


def test_0004_carries_run_and_schedule_approvals_over(env):
    """Runs and schedules that waited on (or went through) an approval at 0003 wait on an
    approval_requests row afterwards, with their levels, parts, decisions and status."""
    import json
    from datetime import datetime

    from sqlalchemy import text

    from server import create_app
    from server.core.migrate import upgrade

    create_app({"TESTING": True})
    engine = db.engine()
    Base.metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    upgrade("0003")
    plan = {"levels": {"1": [2], "2": []}, "parts": {"commands": "abc"}, "policies": [1]}
    with engine.begin() as conn:
        for uid, name in ((1, "olga"), (2, "ann"), (3, "ben")):
            _insert(conn, "users", id=uid, username=name, role="approver", is_active=True)
        _insert(conn, "hosts", id=1, name="web1", address="127.0.0.1")
        _insert(conn, "hosts", id=2, name="web2", address="127.0.0.1")
        _insert(conn, "tasks", id=1, name="restart", kind="commands", commands="[]")
        conn.execute(text("INSERT INTO task_hosts (task_id, host_id) VALUES (1, 1), (1, 2)"))
        # Run 1 waits at level 2 (ann approved level 1); run 2 was approved and ran on web2 only.
        _insert(conn, "executions", id=1, task_id=1, status="waiting_approval", requested_by_id=1,
                fingerprint="f1", approval_level=2, approval_plan=plan,
                approval_expires_at=datetime(2030, 1, 2))
        _insert(conn, "executions", id=2, task_id=1, status="succeeded", requested_by_id=1, fingerprint="f2",
                approval_level=2, approval_plan=plan, limit_hosts=["web2"], queued_at=datetime(2030, 1, 1))
        _insert(conn, "executions", id=3, task_id=1, status="rejected", requested_by_id=1, approval_level=1,
                approval_plan=plan)
        _insert(conn, "executions", id=4, task_id=1, status="queued")  # no approval needed
        _insert(conn, "approvals", execution_id=1, level=1, approver_id=2, decision="approved", fingerprint="f1",
                created_at=datetime(2030, 1, 1, 1))
        _insert(conn, "approvals", execution_id=3, level=1, approver_id=2, decision="rejected",
                created_at=datetime(2030, 1, 1, 1))
        # Schedule 1: a decision on an earlier request, then renewed, now pending at level 2.
        _insert(conn, "schedules", id=1, task_id=1, cron="0 6 * * *", approval_status="pending", approval_plan={
            **plan, "fingerprint": "s1", "level": 2, "requested_by": 1, "decided_by": [2],
            "requested_at": "2030-01-03T00:00:00+00:00"})
        _insert(conn, "approvals", schedule_id=1, level=1, approver_id=3, decision="approved", fingerprint="s0",
                created_at=datetime(2030, 1, 2))
        _insert(conn, "approvals", schedule_id=1, level=1, approver_id=2, decision="approved", fingerprint="s1",
                created_at=datetime(2030, 1, 3, 1))
        _insert(conn, "schedules", id=2, task_id=1, cron="0 7 * * *")  # not under approval
    upgrade("0004")
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT id, execution_id, schedule_id, status, level, levels, parts, hosts, fingerprint, requested_by_id "
            "FROM approval_requests ORDER BY id")).all()
        decided = conn.execute(text("SELECT id, request_id FROM approvals ORDER BY id")).all()
        columns = {c["name"] for c in inspect(conn).get_columns("executions")}

    def loaded(value):
        return json.loads(value) if isinstance(value, str) else value

    got = [(r.execution_id, r.schedule_id, r.status, r.level, loaded(r.hosts), r.fingerprint) for r in rows]
    assert got == [
        (1, None, "pending", 2, ["web1", "web2"], "f1"),
        (2, None, "approved", 2, ["web2"], "f2"),
        (3, None, "rejected", 1, ["web1", "web2"], None),
        (None, 1, "renewed", 1, [], "s0"),
        (None, 1, "pending", 2, ["web1", "web2"], "s1"),
    ]
    assert all(loaded(r.levels) == plan["levels"] and loaded(r.parts) == plan["parts"] for r in rows)
    assert [r.requested_by_id for r in rows] == [1, 1, 1, None, 1]
    by_id = {r.id: r for r in rows}
    assert [(by_id[req].execution_id, by_id[req].schedule_id, by_id[req].status) for _, req in decided] == [
        (1, None, "pending"), (3, None, "rejected"), (None, 1, "renewed"), (None, 1, "pending")]
    assert not columns & {"approval_plan", "approval_level", "approval_expires_at"}
    upgrade("head")
