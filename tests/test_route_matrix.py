"""Every route × every role: allowed or denied, exactly as the table below says.

The walk covers ``app.url_map`` as it is, so a route added without a line in ``EXPECT``
fails ``test_every_route_has_an_expectation`` (and a line for a route that no longer exists
fails it too). Each role gets a fresh database with the same sample objects: a task the
operator's policy grants (view, execute, schedule; approval by the approver), a request
waiting for that approval, a schedule waiting for approval, another user with a token...

Outcomes: *deny* is 401, 403, 404 (hidden) or a redirect to the login page; *allow* is any
other answer below 500 (a 422 for the deliberately empty body still proves the role got
past the access check). A 5xx fails the test whatever the table says.

API routes are called with the role's bearer token, pages with a signed-in session and a
valid CSRF token, so the answer reflects the access rules and nothing else.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

import pytest
from flask import g
from flask.testing import FlaskClient
from sqlalchemy import select

from conftest import ADMIN_PASSWORD, make_user, token_for
from resource_factories import csrf_token

ROLES = ("admin", "author", "operator", "approver", "auditor")
WHO = ROLES + ("anon",)

# ------------------------------------------------------------------ the expectations
ALL = frozenset(ROLES)          # any signed-in user
ANY = ALL | {"anon"}            # no sign-in needed
ADMIN = frozenset({"admin"})
AUDIT = frozenset({"admin", "auditor"})
EDITORS = frozenset({"admin", "author"})          # hosts, credentials, tasks
RUNNERS = frozenset({"admin", "author", "operator"})  # may run/schedule the sample task
DECIDERS = frozenset({"admin", "approver"})       # may decide the sample requests (never the requester)
INVOLVED = frozenset({"admin", "operator", "approver"})  # requester, approver, admin

EXPECT: dict[str, frozenset[str]] = {}  # filled in below, route by route


def expect(roles: Iterable[str], *routes: str) -> None:
    for route in routes:
        assert route not in EXPECT, f"duplicate expectation for {route}"
        EXPECT[route] = frozenset(roles)


# Public.
expect(ANY, "GET /login", "GET /healthz", "GET /static/<path:filename>", "POST /api/v1/auth/token",
       "GET /api/v1/openapi.json")
# Signing in with one's own password; signing out. (Anonymous: no such user / not signed in.)
expect(ALL, "POST /login", "POST /logout", "GET /", "GET /dashboard")
# One's own account, tokens and identity.
expect(ALL, "GET /account", "POST /account/password", "POST /account/tokens", "GET /api/v1/me",
       "GET /api/v1/tokens", "POST /api/v1/tokens")
# Second factor and sessions: one's own (the sample session is another user's: nobody may end it).
# The second step of a sign-in answers 401 to anyone without a password that just passed.
expect(ALL, "GET /api/v1/me/mfa", "POST /api/v1/me/mfa/totp", "POST /api/v1/me/mfa/totp/confirm",
       "DELETE /api/v1/me/mfa/totp", "GET /api/v1/me/sessions", "DELETE /api/v1/me/sessions")
expect(set(), "DELETE /api/v1/me/sessions/<int:session_id>", "POST /login/otp",
       "POST /account/sessions/<int:session_id>/end")
expect(ALL, "GET /account/mfa", "POST /account/mfa/confirm", "POST /account/mfa/disable", "GET /account/mfa/verify",
       "POST /account/mfa/verify", "POST /account/sessions/end-all")
# Sign-in settings: admins. Signing in through the OpenID provider: nobody without one configured.
expect(ADMIN, "GET /admin/sign-in", "POST /admin/sign-in/mfa", "POST /admin/sign-in/ldap",
       "POST /admin/sign-in/ldap/test", "POST /admin/sign-in/oidc", "GET /api/v1/settings/oidc",
       "PUT /api/v1/settings/oidc")
expect(set(), "GET /login/oidc", "GET /login/oidc/callback")
expect(ADMIN, "GET /api/v1/settings/mfa", "PUT /api/v1/settings/mfa", "GET /api/v1/settings/ldap",
       "PUT /api/v1/settings/ldap", "POST /api/v1/settings/ldap/test")
# Someone else's token (the sample is another user's): admins only.
expect(ADMIN, "POST /account/tokens/<int:token_id>/revoke", "DELETE /api/v1/tokens/<int:token_id>")
# Users.
expect(ADMIN, "GET /admin/users", "POST /admin/users", "GET /admin/users/<int:user_id>",
       "POST /admin/users/<int:user_id>", "POST /admin/users/<int:user_id>/delete",
       "GET /api/v1/users", "POST /api/v1/users", "GET /api/v1/users/<int:user_id>",
       "PATCH /api/v1/users/<int:user_id>", "DELETE /api/v1/users/<int:user_id>")
# Access policies: admins write; auditors read all; others read the ones naming them
# (the sample names the operator as user and the approver as approver).
expect(AUDIT, "GET /admin/policies")
expect(ALL, "GET /api/v1/policies")
expect({"admin", "auditor", "operator", "approver"}, "GET /api/v1/policies/<int:policy_id>")
expect(ADMIN, "GET /admin/policies/new", "POST /admin/policies/new", "GET /admin/policies/<int:policy_id>",
       "POST /admin/policies/<int:policy_id>", "POST /admin/policies/<int:policy_id>/delete",
       "POST /api/v1/policies", "PATCH /api/v1/policies/<int:policy_id>", "DELETE /api/v1/policies/<int:policy_id>")
# Audit trail.
expect(AUDIT, "GET /audit", "GET /api/v1/audit", "GET /api/v1/audit/export.jsonl", "GET /api/v1/audit/verify")
# Approvals: everyone has an inbox and may read requests on tasks they see; deciding is for the
# approvers (and admins), never the requester (the operator); a dry run for those involved.
expect(ALL, "GET /approvals", "GET /requests", "GET /approvals/<int:execution_id>",
       "GET /approvals/schedules/<int:schedule_id>", "GET /api/v1/approvals",
       "GET /api/v1/executions/<int:execution_id>/approval", "GET /api/v1/schedules/<int:schedule_id>/approval")
expect(DECIDERS, "POST /approvals/<int:execution_id>/decide", "POST /approvals/schedules/<int:schedule_id>/decide",
       "POST /api/v1/executions/<int:execution_id>/approve", "POST /api/v1/executions/<int:execution_id>/reject",
       "POST /api/v1/schedules/<int:schedule_id>/approve", "POST /api/v1/schedules/<int:schedule_id>/reject")
expect(INVOLVED, "POST /approvals/<int:execution_id>/dry-run", "POST /api/v1/executions/<int:execution_id>/dry-run")
# Hosts: visible to all here (the operator and approver through the sample task); authors edit.
# A reachability test is open to whoever sees the host (logging in with a credential needs hosts.edit).
expect(ALL, "GET /hosts", "GET /api/v1/hosts", "GET /api/v1/hosts/<int:host_id>", "GET /hosts/<int:host_id>/test",
       "POST /hosts/<int:host_id>/test", "POST /api/v1/hosts/<int:host_id>/test",
       "GET /api/v1/hosts/<int:host_id>/host-keys")
# Forgetting a recorded SSH host key (after a rebuild) is an edit of the host.
expect(EDITORS, "POST /hosts/<int:host_id>/host-keys/forget", "DELETE /api/v1/hosts/<int:host_id>/host-keys")
expect(EDITORS, "GET /hosts/bulk", "POST /hosts/bulk", "GET /hosts/new", "POST /hosts/new", "GET /hosts/<int:host_id>/edit", "POST /hosts/<int:host_id>/edit",
       "POST /hosts/<int:host_id>/delete", "POST /api/v1/hosts", "PATCH /api/v1/hosts/<int:host_id>",
       "DELETE /api/v1/hosts/<int:host_id>")
# Groups follow hosts: read by all (the operator and approver see the sample group through the
# sample task's host), edited by authors.
expect(ALL, "GET /groups", "GET /api/v1/groups", "GET /api/v1/groups/<int:group_id>")
expect(EDITORS, "GET /groups/new", "POST /groups/new", "GET /groups/<int:group_id>/edit",
       "POST /groups/<int:group_id>/edit", "POST /groups/<int:group_id>/delete", "POST /api/v1/groups",
       "PATCH /api/v1/groups/<int:group_id>", "DELETE /api/v1/groups/<int:group_id>")
# Credentials: authors manage, auditors read (secrets are write-only anyway).
expect({"admin", "author", "auditor"}, "GET /credentials", "GET /api/v1/credentials",
       "GET /api/v1/credentials/<int:credential_id>")
expect(EDITORS, "GET /credentials/new", "POST /credentials/new", "GET /credentials/<int:credential_id>/edit",
       "POST /credentials/<int:credential_id>/edit", "POST /credentials/<int:credential_id>/delete",
       "POST /api/v1/credentials", "PATCH /api/v1/credentials/<int:credential_id>",
       "DELETE /api/v1/credentials/<int:credential_id>")
# Tasks: visible to all here; authors edit; running needs "execute" (the operator's policy grants it).
expect(ALL, "GET /tasks", "GET /tasks/<int:task_id>", "GET /api/v1/tasks", "GET /api/v1/tasks/<int:task_id>",
       "GET /api/v1/tasks/<int:task_id>/targets")
expect(EDITORS, "GET /tasks/new", "POST /tasks/new", "GET /tasks/<int:task_id>/edit", "POST /tasks/<int:task_id>/edit",
       "POST /tasks/<int:task_id>/delete", "POST /api/v1/tasks", "PATCH /api/v1/tasks/<int:task_id>",
       "DELETE /api/v1/tasks/<int:task_id>")
expect(RUNNERS, "POST /tasks/<int:task_id>/run", "POST /api/v1/tasks/<int:task_id>/executions")
# Projects: read by all; authors and admins add, change and sync them. The webhook has no user:
# only the project's webhook secret lets a call in (here: none, so every role is refused).
expect(ALL, "GET /projects", "GET /api/v1/projects", "GET /api/v1/projects/<int:project_id>",
       "GET /api/v1/projects/<int:project_id>/playbooks")
expect(EDITORS, "POST /projects", "POST /projects/<int:project_id>/sync", "POST /projects/<int:project_id>/delete",
       "POST /api/v1/projects", "PATCH /api/v1/projects/<int:project_id>",
       "DELETE /api/v1/projects/<int:project_id>", "POST /api/v1/projects/<int:project_id>/sync",
       "DELETE /api/v1/projects/<int:project_id>/host-keys")
expect(frozenset(), "POST /api/v1/projects/<int:project_id>/webhook")
# Executions: read by whoever sees the task; cancel / relaunch need "execute".
expect(ALL, "GET /executions", "GET /executions/<int:execution_id>", "GET /executions/<int:execution_id>/live",
       "GET /executions/<int:execution_id>/live/<int:page>",
       "GET /api/v1/executions", "GET /api/v1/executions/<int:execution_id>",
       "GET /executions/<int:execution_id>/steps/<int:step_id>/output",
       "GET /executions/<int:execution_id>/operations/<int:op_id>/output",
       "GET /api/v1/executions/<int:execution_id>/steps/<int:step_id>/output")
# The hosts list's bulk actions: testing needs hosts.view (every role); delete/group check hosts.edit inside.
expect(ALL, "POST /hosts/selected")
# "Notify me" on a task: whoever sees the task (all roles here).
expect(ALL, "POST /tasks/<int:task_id>/subscription")

expect(RUNNERS, "POST /api/v1/executions/<int:execution_id>/cancel", "POST /api/v1/executions/<int:execution_id>/relaunch",
       "GET /executions/<int:execution_id>/relaunch", "POST /executions/<int:execution_id>/relaunch")
# Schedules: read by whoever sees the task; writing needs "schedule"; blackouts and pausing are admin matters.
expect(ALL, "GET /schedules", "GET /schedules/<int:schedule_id>", "GET /api/v1/schedules",
       "GET /api/v1/schedules/<int:schedule_id>", "GET /api/v1/schedules/<int:schedule_id>/fires",
       "GET /api/v1/schedules/preview", "GET /api/v1/tasks/<int:task_id>/schedules", "GET /api/v1/scheduler",
       "GET /blackouts", "GET /api/v1/blackouts", "GET /api/v1/blackouts/<int:blackout_id>")
expect(RUNNERS, "GET /schedules/new", "POST /schedules/new", "POST /schedules/<int:schedule_id>",
       "POST /schedules/<int:schedule_id>/delete", "POST /api/v1/tasks/<int:task_id>/schedules",
       "PATCH /api/v1/schedules/<int:schedule_id>", "DELETE /api/v1/schedules/<int:schedule_id>")
expect(ADMIN, "POST /blackouts", "POST /blackouts/<int:blackout_id>/delete", "POST /api/v1/blackouts",
       "PATCH /api/v1/blackouts/<int:blackout_id>", "DELETE /api/v1/blackouts/<int:blackout_id>",
       "POST /scheduler/pause", "POST /scheduler/resume", "POST /api/v1/scheduler/pause",
       "POST /api/v1/scheduler/resume")
# Reports: every role may read them (rows limited to what the user sees).
expect(ALL, "GET /reports/tasks", "GET /reports/tasks/<int:task_id>", "GET /reports/hosts",
       "GET /reports/hosts/<path:host_name>", "GET /api/v1/reports/executions.csv",
       "GET /api/v1/reports/operations.csv")
# Notifications, metrics and the queue dashboard: admins.
expect(ADMIN, "GET /notifications", "POST /notifications", "GET /notifications/<int:channel_id>",
       "POST /notifications/<int:channel_id>", "POST /notifications/<int:channel_id>/delete",
       "POST /notifications/<int:channel_id>/test", "GET /api/v1/notifications", "POST /api/v1/notifications",
       "GET /api/v1/notifications/<int:channel_id>", "PATCH /api/v1/notifications/<int:channel_id>",
       "DELETE /api/v1/notifications/<int:channel_id>", "GET /api/v1/notifications/<int:channel_id>/deliveries",
       "POST /api/v1/notifications/<int:channel_id>/test", "GET /metrics")
expect(ADMIN, *(f"{m} /admin/rq{r}" for m, r in [
    ("GET", "/"), ("GET", "/<int:instance_number>/"), ("GET", "/<int:instance_number>/view"),
    ("GET", "/<int:instance_number>/view/queues"), ("GET", "/<int:instance_number>/view/workers"),
    ("GET", "/<int:instance_number>/view/jobs"),
    ("GET", "/<int:instance_number>/view/jobs/<queue_name>/<registry_name>/<int:per_page>/<order>/<int:page>"),
    ("GET", "/<int:instance_number>/view/job/<job_id>"), ("GET", "/<int:instance_number>/data/queues.json"),
    ("GET", "/<int:instance_number>/data/workers.json"), ("GET", "/<int:instance_number>/data/job/<job_id>.json"),
    ("GET", "/<int:instance_number>/data/jobs/<queue_name>/<registry_name>/<per_page>/<order>/<page>.json"),
    ("GET", "/favicon.ico"), ("GET", "/static/<path:filename>"), ("GET", "/requeue/<queue_name>"),
    ("POST", "/requeue/<queue_name>"), ("POST", "/job/<job_id>/delete"), ("POST", "/job/<job_id>/requeue"),
    ("POST", "/queue/<queue_name>/<registry_name>/empty"), ("POST", "/queue/<queue_name>/compact")]))


# ------------------------------------------------------------------ sample objects


class IsolatedClient(FlaskClient):
    """The tests keep one app context open, so flask-login's cached user and flask-wtf's
    cached CSRF token (both in ``g``) would leak between clients."""

    def open(self, *args, **kwargs):
        for key in ("_login_user", "csrf_token"):
            g.pop(key, None)
        return super().open(*args, **kwargs)


def _samples(session) -> dict[str, Any]:
    """(Re)create the sample objects the routes act on; return the ids the URLs need."""
    from server.executions import approvals
    from server.executions.request import request_execution
    from server.core.models import (
        ApiToken,
        Blackout,
        Credential,
        Execution,
        Group,
        Host,
        NotificationChannel,
        Operation,
        Policy,
        Project,
        PolicyApprover,
        Schedule,
        Step,
        Task,
        User,
        utcnow,
    )
    from server.core.vault import vault

    def one(model, **where):
        return session.execute(select(model).filter_by(**where)).scalars().first()

    users = {u.username: u for u in session.execute(select(User)).scalars()}
    victim = users.get("m-victim") or make_user(session, "m-victim", "operator")
    victim.is_active = True
    if one(ApiToken, user_id=victim.id, revoked_at=None) is None:
        token_for(session, victim)
    from server.core.models import WebSession
    from server.people import web_sessions

    if one(WebSession, user_id=victim.id, revoked_at=None) is None:
        web_sessions.start(session, victim, "127.0.0.1")
    victim_session = one(WebSession, user_id=victim.id, revoked_at=None)
    host = one(Host, name="m-host") or Host(name="m-host", address="127.0.0.1")
    session.add(host)
    group = one(Group, name="m-group") or Group(name="m-group", vars={}, hosts=[host])
    session.add(group)
    cred = one(Credential, name="m-cred")
    if cred is None:
        cred = Credential(name="m-cred", kind="password", username="deploy", secret_enc=vault().encrypt("pw"))
        session.add(cred)
    task = one(Task, name="m-task")
    if task is None:
        task = Task(name="m-task", kind="commands", commands=["true"], hosts=[host], credential=cred)
        session.add(task)
    session.flush()
    policy = one(Policy, name="m-policy")
    if policy is None:
        policy = Policy(name="m-policy", permissions=["view", "execute", "schedule"], requires_approval=True,
                        users=[users["r-operator"]], tasks=[task])
        policy.approvers = [PolicyApprover(user=users["r-approver"], user_id=users["r-approver"].id, level=1)]
        session.add(policy)
    session.flush()
    # A request still waiting for its (level 1) decision: earlier calls may have decided or cancelled one.
    ex = session.execute(select(Execution).where(Execution.task_id == task.id, Execution.status == "waiting_approval",
                                                 Execution.trigger == "manual")
                         .order_by(Execution.id)).scalars().first()
    if ex is None:
        ex = request_execution(session, task, users["r-operator"], reason="matrix", enqueue=False)
    op = one(Operation, execution_id=ex.id)
    if op is None:  # output to read (the routes that serve it)
        op = Operation(execution_id=ex.id, host_name="m-host", status="pending")
        session.add(op)
        session.flush()
        session.add(Step(operation_id=op.id, seq=1, name="command 1: true", status="running", stdout="x\n"))
        session.flush()
    step = one(Step, operation_id=op.id)
    sch = one(Schedule, task_id=task.id)
    if sch is None:
        sch = Schedule(task_id=task.id, task=task, cron="0 6 * * *", timezone="UTC", vars={},
                       created_by_id=users["r-operator"].id)
        session.add(sch)
        session.flush()
    if sch.approval_status != "pending" or approvals.decisions(session, sch):
        approvals.request_schedule_approval(session, sch, users["r-operator"])
    project = one(Project, name="m-project")
    if project is None:
        project = Project(name="m-project", url="https://example.test/x.git", branch="", sync_status="never",
                          playbooks=[])
        session.add(project)
    chan = one(NotificationChannel, name="m-chan")
    if chan is None:
        chan = NotificationChannel(name="m-chan", url_enc=vault().encrypt("json://127.0.0.1:9/x"),
                                   events=["execution.failed"])
        session.add(chan)
    blackout = one(Blackout, name="m-blackout")
    if blackout is None:
        now = utcnow()
        from datetime import timedelta

        blackout = Blackout(name="m-blackout", starts_at=now + timedelta(days=30), ends_at=now + timedelta(days=31))
        session.add(blackout)
    session.commit()
    from rq.job import Job

    from server.executions import jobs
    from server.core.redis_conn import redis

    if not Job.exists(f"execution-{ex.id}", connection=redis()):
        # A failed job for the queue dashboard's job pages (view, requeue, delete).
        from rq.registry import FailedJobRegistry

        jobs.enqueue(ex.id)
        job = Job.fetch(f"execution-{ex.id}", connection=redis())
        jobs.queue().remove(job)
        job.set_status("failed")
        FailedJobRegistry(queue=jobs.queue()).add(job, ttl=3600)
    token = one(ApiToken, user_id=victim.id, revoked_at=None)
    return {
        "host_id": host.id, "group_id": group.id, "credential_id": cred.id, "task_id": task.id, "execution_id": ex.id, "op_id": op.id, "step_id": step.id,
        "schedule_id": sch.id, "policy_id": policy.id, "user_id": victim.id, "token_id": token.id,
        "channel_id": chan.id, "blackout_id": blackout.id, "project_id": project.id, "session_id": victim_session.id, "host_name": "m-host", "filename": "app.css",
        "rq_static": "css/main.css",
        # rq-dashboard
        "instance_number": 0, "job_id": f"execution-{ex.id}", "queue_name": jobs.queue().name,
        "registry_name": "failed",
        "per_page": 10, "order": "asc", "page": 1,
    }


def _url(rule, values: dict[str, Any]) -> str:
    if rule.endpoint == "rq_dashboard.static":
        values = {**values, "filename": values["rq_static"]}
    missing = [a for a in rule.arguments if a not in values]
    assert not missing, f"no sample value for {missing} in {rule.rule}: add one to _samples()"
    path = rule.rule
    for name in rule.arguments:
        path = re.sub(r"<(?:[^:<>]+:)?" + name + r">", str(values[name]), path)
    return path


def _routes(app) -> list[tuple[str, Any]]:
    routes = []
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            routes.append((f"{method} {rule.rule}", rule))
    return routes


def _order(item: tuple[str, Any]) -> tuple[int, str]:
    """Reads first, then writes, deletions, and signing out (here, then everywhere) last of all."""
    key = item[0]
    method = key.split(" ", 1)[0]
    rank = {"GET": 0, "POST": 1, "PATCH": 1, "PUT": 1, "DELETE": 2}.get(method, 1)
    if "/logout" in key:
        rank = 3
    if key in ("DELETE /api/v1/me/sessions", "POST /account/sessions/end-all"):
        rank = 4
    return rank, key


def _outcome(resp) -> str:
    if resp.status_code >= 500:
        return f"error {resp.status_code}"
    if resp.status_code in (401, 403, 404):
        return "deny"
    location = resp.headers.get("Location", "")
    if 300 <= resp.status_code < 400 and "/login" in location and "next=" in location:
        return "deny"  # login_required (signing out also lands on /login, without ?next)
    return "allow"


def _clients(app, session, role: str):
    """(api client + headers, web client, csrf token) for a role or for nobody."""
    app.test_client_class = IsolatedClient
    api = app.test_client()
    web = app.test_client()
    headers: dict[str, str] = {}
    if role != "anon":
        from server.core.models import User

        user = session.execute(select(User).where(User.username == f"r-{role}")).scalar_one()
        headers["Authorization"] = f"Bearer {token_for(session, user)}"
        page = web.get("/login").get_data(as_text=True)
        resp = web.post("/login", data={"username": f"r-{role}", "password": ADMIN_PASSWORD,
                                        "csrf_token": csrf_token(page)})
        assert resp.status_code == 302, resp.data
        token = csrf_token(web.get("/account").get_data(as_text=True))
    else:
        token = csrf_token(web.get("/login").get_data(as_text=True))
    return api, headers, web, token


def walk(app, session, role: str) -> dict[str, str]:
    """Call every route as ``role``; return route -> outcome."""
    for r in ROLES:
        make_user(session, f"r-{r}", r)
    values = _samples(session)
    api, headers, web, token = _clients(app, session, role)
    seen: dict[str, str] = {}
    for key, rule in sorted(_routes(app), key=_order):
        method = key.split(" ", 1)[0]
        if method != "GET":
            values = _samples(session)
        url = _url(rule, values)
        try:
            if rule.rule.startswith("/api/"):
                kwargs: dict[str, Any] = {"headers": headers}
                if method in ("POST", "PATCH", "PUT"):
                    kwargs["json"] = {}
                resp = api.open(url, method=method, **kwargs)
            else:
                data = {"csrf_token": token} if method != "GET" else None
                if key == "POST /login":  # signing in is what this route is for
                    data["username"], data["password"] = f"r-{role}", ADMIN_PASSWORD
                # Same-origin, as a browser would send it (the queue dashboard checks Origin).
                resp = web.open(url, method=method, data=data, headers={"Origin": "http://localhost"})
            if resp.status_code == 308:  # a routing alias (e.g. /admin/rq/0/view): judge where it leads
                target = resp.headers["Location"]
                resp.close()
                if rule.rule.startswith("/api/"):
                    resp = api.open(target, method=method, headers=headers)
                else:
                    resp = web.open(target, method=method)
        except Exception as exc:  # noqa: BLE001 - TESTING propagates what would be a 500
            seen[key] = f"error {type(exc).__name__}: {exc}"
            session.rollback()
            continue
        seen[key] = _outcome(resp)
        resp.get_data()  # consume streamed bodies (exports) so their request context ends
        resp.close()
        session.rollback()
        session.expire_all()
    return seen


# ------------------------------------------------------------------ the tests


def test_every_route_has_an_expectation(app):
    routes = {key for key, _ in _routes(app)}
    missing = sorted(routes - set(EXPECT))
    stale = sorted(set(EXPECT) - routes)
    assert not missing, "routes without an access expectation (add them to EXPECT):\n" + "\n".join(missing)
    assert not stale, "expectations for routes that no longer exist:\n" + "\n".join(stale)


@pytest.mark.parametrize("role", WHO)
def test_route_matrix(app, session, role):
    seen = walk(app, session, role)
    wrong = []
    for key, outcome in sorted(seen.items()):
        if key not in EXPECT:
            continue  # reported by test_every_route_has_an_expectation
        wanted = "allow" if role in EXPECT[key] else "deny"
        if outcome != wanted:
            wrong.append(f"{key}: expected {wanted}, got {outcome}")
    assert not wrong, f"as {role}:\n" + "\n".join(wrong)


def test_a_new_route_without_a_rule_is_caught(app):
    """The mechanism itself: a route nobody classified shows up as missing."""
    app.add_url_rule("/brand-new/<int:thing_id>", "brand_new", lambda thing_id: "x", methods=["GET", "POST"])
    missing = {key for key, _ in _routes(app)} - set(EXPECT)
    assert missing == {"GET /brand-new/<int:thing_id>", "POST /brand-new/<int:thing_id>"}


# ------------------------------------------------------------------ token scopes

# The scope each API write needs (every read needs "read"); "account": a token holding all of
# its owner's scopes. A write not listed here is an "admin" one.
SCOPE_OF: dict[str, str] = {}
for _route in ("POST /api/v1/executions/<int:execution_id>/approve", "POST /api/v1/executions/<int:execution_id>/reject",
               "POST /api/v1/schedules/<int:schedule_id>/approve", "POST /api/v1/schedules/<int:schedule_id>/reject"):
    SCOPE_OF[_route] = "approve"
for _route in ("POST /api/v1/tasks/<int:task_id>/executions", "POST /api/v1/executions/<int:execution_id>/cancel",
               "POST /api/v1/executions/<int:execution_id>/relaunch", "POST /api/v1/executions/<int:execution_id>/dry-run",
               "POST /api/v1/tasks/<int:task_id>/schedules",
               "PATCH /api/v1/schedules/<int:schedule_id>", "DELETE /api/v1/schedules/<int:schedule_id>",
               "POST /api/v1/projects/<int:project_id>/sync"):
    SCOPE_OF[_route] = "execute"
for _route in ("POST /api/v1/tokens", "DELETE /api/v1/tokens/<int:token_id>", "POST /api/v1/me/mfa/totp",
               "POST /api/v1/me/mfa/totp/confirm", "DELETE /api/v1/me/mfa/totp", "DELETE /api/v1/me/sessions",
               "DELETE /api/v1/me/sessions/<int:session_id>"):
    SCOPE_OF[_route] = "account"


SCOPE_OF["POST /api/v1/hosts/<int:host_id>/test"] = "read"  # a reachability test changes nothing


def scope_of(key: str) -> str:
    return "read" if key.startswith("GET ") else SCOPE_OF.get(key, "admin")


def test_token_scope_matrix(app, session):
    """An admin's tokens limited to one scope each: every API route answers 403
    ``insufficient_scope`` to the tokens without its scope, and lets the one with it past
    the scope check (the refusal comes before the view, so the others change nothing)."""
    from server.core.models import User
    from server.people.auth import issue_token

    for r in ROLES:
        make_user(session, f"r-{r}", r)
    admin = session.execute(select(User).where(User.username == "r-admin")).scalar_one()
    tokens = {scope: issue_token(session, admin, scope, scopes=[scope]) for scope in ("read", "execute", "approve",
                                                                                       "admin")}
    session.commit()
    app.test_client_class = IsolatedClient
    client = app.test_client()
    wrong = []
    values = _samples(session)
    for key, rule in sorted(_routes(app), key=_order):
        if not rule.rule.startswith("/api/v1/") or key in (
                "POST /api/v1/auth/token", "GET /api/v1/openapi.json",
                "POST /api/v1/projects/<int:project_id>/webhook"):  # no token: a signature
            continue
        method = key.split(" ", 1)[0]
        if method != "GET":
            values = _samples(session)
        url = _url(rule, values)
        # The token holding the route's scope goes last: its call may change what the URL names.
        for scope, token in sorted(tokens.items(), key=lambda item: item[0] == scope_of(key)):
            kwargs: dict[str, Any] = {"headers": {"Authorization": f"Bearer {token}"}}
            if method in ("POST", "PATCH", "PUT"):
                kwargs["json"] = {}
            resp = client.open(url, method=method, **kwargs)
            body = resp.get_json(silent=True) or {}
            refused = resp.status_code == 403 and body.get("error", {}).get("code") == "insufficient_scope"
            assert resp.status_code < 500, (key, resp.status_code)
            if refused != (scope_of(key) != scope):
                wrong.append(f"{key}: needs {scope_of(key)}, token has {scope}, got {resp.status_code} {body}")
            resp.close()
            session.rollback()
            session.expire_all()
    assert not wrong, "\n".join(wrong)
