"""Hosts in bulk: ``POST /api/v1/hosts`` with a JSON array creates them all or none."""
from __future__ import annotations

import time

from sqlalchemy import func, select

from server.core.models import AuditLog, Group, Host


def _count(session, model) -> int:
    session.expire_all()
    return session.execute(select(func.count()).select_from(model)).scalar_one()


def test_bulk_create_validates_audits_and_is_fast(api, session):
    items = [{"name": f"node{i:05d}", "address": f"10.1.{i // 250}.{i % 250 + 1}", "groups": ["fleet", f"rack{i % 4}"]}
             for i in range(2000)]
    began = time.monotonic()
    status, body = api.post("/api/v1/hosts", items)
    elapsed = time.monotonic() - began
    assert status == 201, body
    assert len(body) == 2000 and [h["name"] for h in body] == [i["name"] for i in items]
    assert elapsed < 20  # one request, one transaction (about 1 s here), not 2000 round trips
    assert _count(session, Host) == 2000
    assert sorted(session.execute(select(Group.name)).scalars()) == ["fleet", "rack0", "rack1", "rack2", "rack3"]
    created = session.execute(select(func.count()).select_from(AuditLog).where(AuditLog.action == "host.create")
                              ).scalar_one()
    assert created == 2000
    status, one = api.get(f"/api/v1/hosts/{body[7]['id']}")
    assert status == 200 and one["address"] == "10.1.0.8" and one["groups"] == ["fleet", "rack3"]


def test_bulk_errors_name_the_item_and_create_nothing(api, session, api_as):
    ok = {"name": "fine", "address": "10.0.0.1"}
    cases = [
        ([ok, {"name": "bad", "port": 70000}], 422, "[1].port", "item 1 ('bad')"),
        ([ok, {"name": "x", "vars": {"ansible_host": "evil"}}], 422, "[1].vars", "item 1 ('x')"),
        ([ok, "not an object"], 422, "[1]", "item 1"),
        ([ok, {"address": "10.0.0.2"}], 422, "[1].name", "item 1"),
        ([ok, {"name": "fine", "address": "10.0.0.3"}], 409, "[1].name", "also item 0"),
        ([], 422, None, "non-empty"),
    ]
    for body, status, field, words in cases:
        got, resp = api.post("/api/v1/hosts", body)
        assert got == status, (body, resp)
        assert words in resp["error"]["message"], resp
        assert resp["error"].get("field") == field, resp
    assert _count(session, Host) == 0  # all or none
    status, resp = api.post("/api/v1/hosts", [{"name": f"h{i}"} for i in range(10_001)])
    assert status == 422 and "at most 10000" in resp["error"]["message"]

    api.post("/api/v1/hosts", [ok])
    got, resp = api.post("/api/v1/hosts", [{"name": "new"}, ok])
    assert got == 409 and resp["error"]["field"] == "[1].name" and "already exists" in resp["error"]["message"]
    got, resp = api_as("op", "operator").post("/api/v1/hosts", [{"name": "other"}])
    assert got == 403
    got, resp = api_as("au", "author").post("/api/v1/hosts", [{"name": "other"}, {"name": "me", "protocol": "local"}])
    assert got == 403 and resp["error"]["field"] == "[1].protocol" and "item 1 ('me')" in resp["error"]["message"]
    got, resp = api.post("/api/v1/hosts", [{"name": "other"}, {"name": "me", "protocol": "local"}])
    assert got == 201  # an admin may add local hosts
    assert _count(session, Host) == 3
