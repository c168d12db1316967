"""Groups API and page: the tree (children, priority, vars) edited by hand, with the checks an
import never needed: unknown children, cycles, reserved names, rights, audit."""
from __future__ import annotations

from sqlalchemy import select

from resource_factories import host, task
from server.core.models import AuditLog, Group, Host
from server.runs.inventory import build_inventory
from test_web_resources import Browser, field_error


def group(api, name: str, **fields) -> dict:
    status, body = api.post("/api/v1/groups", {"name": name, **fields})
    assert status == 201, body
    return body


def error(resp) -> tuple[int, str | None, str]:
    status, body = resp
    return status, body["error"].get("field"), body["error"]["message"]


def test_tree_edited_through_the_api_reaches_the_inventory(api, session):
    host(api, "web1", groups=["web_eu"])
    eu = next(g for g in api.get("/api/v1/groups")[1]["items"] if g["name"] == "web_eu")
    assert eu["host_count"] == 1 and eu["children"] == [] and eu["priority"] is None
    web = group(api, "web", children=["web_eu"], priority=5, vars={"ntp": "ntp.example.com", "tier": "web"})
    assert web["children"] == ["web_eu"] and web["priority"] == 5 and web["host_count"] == 0
    status, eu = api.patch(f"/api/v1/groups/{eu['id']}", {"vars": {"tier": "eu"}})
    assert status == 200 and eu["parents"] == ["web"] and eu["vars"] == {"tier": "eu"}
    assert api.get(f"/api/v1/groups/{web['id']}")[1]["children"] == ["web_eu"]

    session.expire_all()
    inv = build_inventory(session.execute(select(Host)).scalars().all(), None)["all"]["children"]
    assert list(inv) == ["web"]  # the tree, not a flattened copy: Ansible applies its precedence
    assert inv["web"]["vars"] == {"ntp": "ntp.example.com", "tier": "web", "ansible_group_priority": 5}
    assert inv["web"]["children"]["web_eu"] == {"hosts": {"web1": None}, "vars": {"tier": "eu"}}

    status, body = api.patch(f"/api/v1/groups/{web['id']}", {"children": None, "priority": None})
    assert status == 200 and body["children"] == [] and body["priority"] is None
    assert api.get("/api/v1/groups?q=eu")[1]["total"] == 1


def test_children_must_exist_and_never_make_a_cycle(api):
    a = group(api, "a")
    b = group(api, "b", children=["a"])
    c = group(api, "c", children=["b"])
    assert error(api.post("/api/v1/groups", {"name": "d", "children": ["a", "nope", "zz"]})) == (
        422, "children", "'children' names unknown groups: nope, zz (add them first)")
    assert api.get("/api/v1/groups?q=d")[1]["total"] == 0  # nothing written
    status, field, message = error(api.patch(f"/api/v1/groups/{a['id']}", {"children": ["c"]}))  # a > c > b > a
    assert (status, field) == (422, "children") and "own descendant" in message and "'c'" in message
    status, field, _ = error(api.patch(f"/api/v1/groups/{b['id']}", {"children": ["b"]}))
    assert (status, field) == (422, "children")
    status, field, _ = error(api.post("/api/v1/groups", {"name": "e", "children": ["e"]}))
    assert (status, field) == (422, "children")  # not stored yet, so unknown: still no self-loop
    status, body = api.patch(f"/api/v1/groups/{c['id']}", {"children": ["a", "b"]})  # a diamond is fine
    assert status == 200 and body["children"] == ["a", "b"]


def test_names_and_values_are_checked(api):
    g = group(api, "ok")
    for body, field in (({"name": "all"}, "name"), ({"name": "1st"}, "name"), ({"name": "a b"}, "name"),
                        ({"name": "x", "children": ["ungrouped"]}, "children"), ({"name": "x", "priority": "5"},
                                                                                 "priority"),
                        ({"name": "x", "vars": {"ansible_user": "root"}}, "vars"), ({"name": "x", "hosts": []}, "hosts"),
                        ({}, "name")):
        status, got, _ = error(api.post("/api/v1/groups", body))
        assert (status, got) == (422, field), body
    assert error(api.post("/api/v1/groups", {"name": "ok"}))[:2] == (409, "name")
    group(api, "other")
    assert error(api.patch(f"/api/v1/groups/{g['id']}", {"name": "other"}))[:2] == (409, "name")
    assert api.patch(f"/api/v1/groups/{g['id']}", {"name": "ok"})[0] == 200
    assert api.get("/api/v1/groups/abc")[0] == 404


def test_the_all_group_takes_only_variables(api, session):
    session.add(Group(name="all", vars={"ntp": "a"}))
    session.commit()
    gid = session.execute(select(Group.id).where(Group.name == "all")).scalar_one()
    status, body = api.patch(f"/api/v1/groups/{gid}", {"vars": {"ntp": "b"}})
    assert status == 200 and body["vars"] == {"ntp": "b"} and body["name"] == "all"
    group(api, "kid")
    for change in ({"children": ["kid"]}, {"priority": 3}, {"name": "everything"}):
        assert error(api.patch(f"/api/v1/groups/{gid}", change))[:2] == (422, next(iter(change)))


def test_delete_keeps_hosts_and_children_and_refuses_a_task_target(api, session):
    host(api, "db1", groups=["db"])
    kid = group(api, "db_eu")
    parent = group(api, "dbs", children=["db", "db_eu"])
    db = next(g for g in api.get("/api/v1/groups?q=db")[1]["items"] if g["name"] == "db")
    task(api, "backup", kind="commands", commands=["true"], groups=["db"])
    status, field, message = error(api.delete(f"/api/v1/groups/{db['id']}"))
    assert status == 409 and "backup" in message
    assert api.delete(f"/api/v1/groups/{parent['id']}")[0] == 204
    assert api.get(f"/api/v1/groups/{kid['id']}")[1]["parents"] == []
    assert api.get("/api/v1/hosts")[1]["items"][0]["groups"] == ["db"]
    session.expire_all()
    rows = session.execute(select(AuditLog.action, AuditLog.detail).where(AuditLog.target_type == "group")
                           .order_by(AuditLog.id)).tuples().all()
    assert [a for a, _ in rows] == ["group.create", "group.create", "group.create", "group.delete"]
    assert rows[-1][1]["children"] == ["db", "db_eu"] and rows[-1][1]["name"] == "dbs"


def test_rights_follow_hosts(api, api_as):
    host(api, "seen", groups=["seen_g"])
    host(api, "hidden", groups=["hidden_g"])
    group(api, "parent", children=["seen_g"])
    task(api, "t", kind="commands", commands=["true"], hosts=["seen"])
    author, operator = api_as("au", "author"), api_as("op", "operator")
    assert author.post("/api/v1/groups", {"name": "by_author"})[0] == 201
    assert operator.post("/api/v1/groups", {"name": "by_op"})[0] == 403
    assert operator.get("/api/v1/groups")[1]["total"] == 0  # no policy yet: no task, no host, no group
    status, pol = api.post("/api/v1/policies", {"name": "p", "users": ["op"], "tasks": ["t"], "permissions": ["view"]})
    assert status == 201, pol
    assert [g["name"] for g in operator.get("/api/v1/groups")[1]["items"]] == ["seen_g"]
    hidden = next(g for g in api.get("/api/v1/groups")[1]["items"] if g["name"] == "hidden_g")
    assert operator.get(f"/api/v1/groups/{hidden['id']}")[0] == 404
    assert operator.patch(f"/api/v1/groups/{hidden['id']}", {"vars": {}})[0] == 403


def test_group_page_shows_a_cycle_next_to_its_field(app, admin_user, api):
    group(api, "leaf")
    admin = Browser(app, "admin")
    status, _, location = admin.submit("/groups/new", data={"name": "top", "children": "leaf", "priority": "2",
                                                            "vars": "tier: top"})
    assert status == 302 and location.endswith("/groups")
    status, page = admin.get("/groups")
    assert status == 200 and "top" in page and "leaf" in page
    leaf = next(g for g in api.get("/api/v1/groups")[1]["items"] if g["name"] == "leaf")
    status, page, _ = admin.submit(f"/groups/{leaf['id']}/edit", data={"name": "leaf", "children": "top"})
    assert status == 422 and "own descendant" in field_error(page, "g-children")
    status, page, _ = admin.submit(f"/groups/{leaf['id']}/edit", data={"name": "leaf", "priority": "high"})
    assert status == 422 and "integer" in field_error(page, "g-priority")
    top = next(g for g in api.get("/api/v1/groups")[1]["items"] if g["name"] == "top")
    assert top["vars"] == {"tier": "top"} and top["priority"] == 2
    status, _, _ = admin.submit(f"/groups/{top['id']}/edit", f"/groups/{top['id']}/delete")
    assert status == 302 and api.get(f"/api/v1/groups/{top['id']}")[0] == 404


def test_a_group_reaches_the_hosts_of_the_groups_below_it(api, api_as):
    """As in Ansible: a task on ``usa`` runs on the hosts of ``east``, ``west`` and ``bay`` below
    it, its limit patterns and its operators' view follow the tree, and only an admin may hang
    a group holding the Task Manager server itself (a ``local`` host) below another."""
    group(api, "bay")
    group(api, "east")
    group(api, "west", children=["bay"])
    usa = group(api, "usa", children=["east", "west"])
    for name, grp in (("ny1", "east"), ("la1", "west"), ("sf1", "bay"), ("eu1", "eu")):
        host(api, name, groups=[grp])
    t = task(api, "usa-restart", groups=["usa"])
    targets = api.get(f"/api/v1/tasks/{t['id']}/targets")[1]
    assert [h["name"] for h in targets["items"]] == ["la1", "ny1", "sf1"], targets
    for limit, expected in (("west", ["la1", "sf1"]), ("usa:!bay", ["la1", "ny1"]), ("eu", None)):
        status, body = api.get(f"/api/v1/tasks/{t['id']}/targets?limit={limit}")
        assert (status, [h["name"] for h in body.get("items", [])]) == ((200, expected) if expected else (422, [])), body
    operator = api_as("op", "operator")
    assert api.post("/api/v1/policies", {"name": "p", "users": ["op"], "tasks": ["usa-restart"],
                                         "permissions": ["view"]})[0] == 201
    assert [h["name"] for h in operator.get("/api/v1/hosts")[1]["items"]] == ["la1", "ny1", "sf1"]

    host(api, "tm", protocol="local", groups=["controller"])
    author = api_as("au", "author")
    status, field, message = error(author.patch(f"/api/v1/groups/{usa['id']}",
                                                {"children": ["controller", "east", "west"]}))
    assert (status, field) == (403, "children") and "tm" in message and "local" in message
    assert error(author.post("/api/v1/groups", {"name": "all_dc", "children": ["controller"]}))[:2] == \
        (403, "children")
    assert author.patch(f"/api/v1/groups/{usa['id']}", {"children": ["east"]})[0] == 200  # no local host below
    status, body = api.patch(f"/api/v1/groups/{usa['id']}", {"children": ["controller", "east"]})
    assert status == 200 and body["children"] == ["controller", "east"]  # the admin may

    assert api.post("/api/v1/policies", {"name": "p2", "users": ["op"], "tasks": ["usa-restart"],
                                         "permissions": ["view", "execute", "edit"]})[0] == 201
    assert error(operator.patch(f"/api/v1/tasks/{t['id']}", {"groups": ["eu"]}))[:2] == (403, "groups")
    status, body = operator.patch(f"/api/v1/tasks/{t['id']}", {"groups": ["east"]})  # below usa: his already
    assert status == 200 and body["groups"] == ["east"], body
