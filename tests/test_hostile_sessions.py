"""Sessions and accounts against a hostile user (issue 17, item 8).

A copied session cookie dies at logout, password change and reset; a reset revokes API
tokens; a temporary password cannot mint tokens; failed sign-ins slow down one address for
one account instead of locking the account; every response carries the security headers;
``next=`` never leaves the site. All through the real app, its real Redis and database.
"""
from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest
from flask import g
from flask.testing import FlaskClient
from sqlalchemy import select, update

from conftest import ADMIN_PASSWORD, Api, make_user, token_for
from resource_factories import csrf_token
from server.people import login_throttle
from server.core.config import parse_trusted_proxies
from server.core.models import ApiToken, AuditLog, User, WebSession, utcnow

NEW_PASSWORD = "a-brand-new-password-7"


class IsolatedClient(FlaskClient):
    """The tests keep one app context open, so ``g`` outlives a request: flask-login's cached
    user and flask-wtf's cached CSRF token would leak from one client (browser) to another
    and hide exactly what is tested here."""

    def open(self, *args, **kwargs):
        for key in ("_login_user", "csrf_token"):
            g.pop(key, None)
        return super().open(*args, **kwargs)


@pytest.fixture(autouse=True)
def _isolated_clients(app):
    app.test_client_class = IsolatedClient


def sign_in(app, username: str, password: str = ADMIN_PASSWORD, *, next_: str | None = None,
            address: str = "127.0.0.1"):
    """A fresh client that posts the real login form; returns (client, response).

    ``next_`` goes into the URL as given (already percent-encoded, as an attacker's link)."""
    client = app.test_client()
    url = "/login" if next_ is None else "/login?next=" + next_
    page = client.get(url).get_data(as_text=True)
    resp = client.post(url, environ_base={"REMOTE_ADDR": address},
                       data={"username": username, "password": password, "csrf_token": csrf_token(page)})
    return client, resp


def signed_in(app, username: str, password: str = ADMIN_PASSWORD):
    client, resp = sign_in(app, username, password)
    assert resp.status_code == 302, resp.get_data(as_text=True)
    return client


def copy_of(app, client) -> FlaskClient:
    """Another browser holding a copy of ``client``'s session cookie (a stolen cookie)."""
    thief = app.test_client()
    thief.set_cookie("session", client.get_cookie("session").value)
    return thief


def assert_signed_in(client) -> None:
    assert client.get("/executions").status_code == 200
    assert client.get("/api/v1/me").status_code == 200


def assert_signed_out(client) -> None:
    page = client.get("/executions")
    assert page.status_code == 302 and "/login" in page.headers["Location"]
    resp = client.get("/api/v1/me")
    assert resp.status_code == 401 and resp.json["error"]["code"] == "unauthorized"


def form_token(client, path: str = "/account") -> str:
    return csrf_token(client.get(path).get_data(as_text=True))


def token_login(client, username: str, password: str, address: str = "127.0.0.1", **kw):
    return client.post("/api/v1/auth/token", json={"username": username, "password": password},
                       environ_base={"REMOTE_ADDR": address}, **kw)


# ------------------------------------------------------------------ server-side sessions


def test_a_copied_cookie_dies_at_logout(app, admin_user, session):
    client = signed_in(app, "admin")
    thief = copy_of(app, client)
    assert_signed_in(thief)
    resp = client.post("/logout", data={"csrf_token": form_token(client)})
    assert resp.status_code == 302
    assert_signed_out(thief)
    assert_signed_out(client)
    rows = session.execute(select(WebSession)).scalars().all()
    assert len(rows) == 1 and rows[0].revoked_at is not None


def test_the_cookie_carries_a_key_stored_only_as_a_hash(app, admin_user, session):
    client = signed_in(app, "admin")
    from flask.sessions import SecureCookieSessionInterface

    data = SecureCookieSessionInterface().get_signing_serializer(app).loads(client.get_cookie("session").value)
    key = data["_tm_sid"]
    assert len(key) >= 40
    row = session.execute(select(WebSession)).scalar_one()
    assert row.key_hash != key and key not in row.key_hash and row.user_id == admin_user.id
    # A forged cookie for the same user without a live key is refused, even correctly signed.
    forged = app.test_client()
    forged.set_cookie("session", SecureCookieSessionInterface().get_signing_serializer(app).dumps(
        {**data, "_tm_sid": "guessed"}))
    assert_signed_out(forged)


def test_a_password_change_ends_every_other_session(app, admin_user, session):
    make_user(session, "olga", "operator")
    laptop = signed_in(app, "olga")
    phone = signed_in(app, "olga")
    stolen = copy_of(app, phone)
    resp = laptop.post("/account/password", data={"current_password": ADMIN_PASSWORD, "new_password": NEW_PASSWORD,
                                                  "confirm": NEW_PASSWORD, "csrf_token": form_token(laptop)})
    assert resp.status_code == 302
    assert_signed_in(laptop)  # the session that changed it stays
    assert_signed_out(phone)
    assert_signed_out(stolen)
    row = session.execute(select(AuditLog).where(AuditLog.action == "user.password")).scalar_one()
    assert row.detail["sessions_revoked"] == 1
    signed_in(app, "olga", NEW_PASSWORD)


def test_an_admin_reset_ends_sessions_and_revokes_tokens(app, api, session):
    olga = make_user(session, "olga", "operator")
    olga_api = Api(app.test_client(), token_for(session, olga))
    assert olga_api.get("/api/v1/me")[0] == 200
    browser = signed_in(app, "olga")
    stolen = copy_of(app, browser)
    status, body = api.patch(f"/api/v1/users/{olga.id}", {"password": NEW_PASSWORD})
    assert status == 200 and body["must_change_password"] is True
    assert_signed_out(browser)
    assert_signed_out(stolen)
    assert olga_api.get("/api/v1/me")[0] == 401
    tokens = session.execute(select(ApiToken).where(ApiToken.user_id == olga.id)).scalars().all()
    assert tokens and all(t.revoked_at is not None for t in tokens)
    audit = session.execute(select(AuditLog).where(AuditLog.action == "user.update")
                            .order_by(AuditLog.id.desc())).scalars().first()
    assert audit.detail["password"] == "reset" and audit.detail["tokens_revoked"] == 1
    assert audit.detail["sessions_revoked"] == 1


def test_an_admin_reset_in_the_admin_page_does_the_same(app, api, session):
    olga = make_user(session, "olga", "operator")
    olga_api = Api(app.test_client(), token_for(session, olga))
    browser = signed_in(app, "olga")
    admin = signed_in(app, "admin")
    resp = admin.post(f"/admin/users/{olga.id}", data={"role": "operator", "email": "", "is_active": "on",
                                                       "password": NEW_PASSWORD,
                                                       "csrf_token": form_token(admin, "/admin/users")})
    assert resp.status_code == 302
    assert_signed_out(browser)
    assert olga_api.get("/api/v1/me")[0] == 401
    assert_signed_in(admin)


def test_an_admin_changing_his_own_password_keeps_his_session_and_tokens(app, api, admin_user, session):
    browser = signed_in(app, "admin")
    other = signed_in(app, "admin")
    resp = browser.post(f"/admin/users/{admin_user.id}", data={
        "role": "admin", "email": "", "is_active": "on", "password": NEW_PASSWORD,
        "csrf_token": form_token(browser, "/admin/users")})
    assert resp.status_code == 302
    assert_signed_in(browser)
    assert_signed_out(other)
    assert api.get("/api/v1/me")[0] == 200
    session.expire_all()
    assert session.get(User, admin_user.id).must_change_password is False


def test_deactivation_and_idle_sessions_end(app, api, session):
    olga = make_user(session, "olga", "operator")
    idle = signed_in(app, "olga")
    browser = signed_in(app, "olga")
    session.execute(update(WebSession).where(WebSession.id == 1)
                    .values(last_seen_at=utcnow() - app.permanent_session_lifetime - timedelta(minutes=1)))
    session.commit()
    assert_signed_out(idle)  # idle longer than the session lifetime
    assert_signed_in(browser)
    assert api.delete(f"/api/v1/users/{olga.id}")[0] == 204
    assert_signed_out(browser)
    assert session.execute(select(WebSession).where(WebSession.revoked_at.is_(None))).first() is None


def test_signing_in_drops_the_users_ended_sessions(app, admin_user, session):
    for _ in range(3):
        client = signed_in(app, "admin")
        client.post("/logout", data={"csrf_token": form_token(client)})
    signed_in(app, "admin")
    rows = session.execute(select(WebSession)).scalars().all()
    assert len(rows) == 1 and rows[0].revoked_at is None


# ------------------------------------------------------------------ temporary passwords and tokens


def test_a_temporary_password_cannot_mint_api_tokens(app, api, session):
    status, olga = api.post("/api/v1/users", {"username": "olga", "role": "operator", "password": "first-pass-1"})
    assert api.patch(f"/api/v1/users/{olga['id']}", {"password": "temporary-1"})[0] == 200
    client = app.test_client()
    resp = token_login(client, "olga", "temporary-1")
    assert resp.status_code == 403
    assert resp.json["error"]["code"] == "password_change_required"
    assert "choose your own password" in resp.json["error"]["message"]
    # With a web session: the tokens API and the account page refuse too.
    browser = signed_in(app, "olga", "temporary-1")
    token = form_token(browser)
    resp = browser.post("/api/v1/tokens", json={"name": "x"}, headers={"X-CSRFToken": token})
    assert resp.status_code == 403 and resp.json["error"]["code"] == "password_change_required"
    resp = browser.post("/account/tokens", data={"name": "x", "csrf_token": token})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/account")  # sent to change it first
    assert session.execute(select(ApiToken).where(ApiToken.user_id == olga["id"],
                                                  ApiToken.revoked_at.is_(None))).first() is None
    denied = session.execute(select(AuditLog).where(AuditLog.action == "token.create",
                                                    AuditLog.outcome == "denied")).scalars().all()
    assert len(denied) == 2 and {d.detail["reason"] for d in denied} == {"password change required"}
    # Once he has chosen his own password, tokens work.
    resp = browser.post("/account/password", data={"current_password": "temporary-1", "new_password": NEW_PASSWORD,
                                                   "confirm": NEW_PASSWORD, "csrf_token": token})
    assert resp.status_code == 302
    resp = token_login(client, "olga", NEW_PASSWORD)
    assert resp.status_code == 201 and resp.json["token"].startswith("tm_")


# ------------------------------------------------------------------ progressive delay, not lockout


def test_failures_from_one_address_never_lock_the_admin_out(app, admin_user, session):
    from server.core.redis_conn import redis

    client = app.test_client()
    attacker = "198.51.100.66"
    key = login_throttle._account_key("admin", attacker)

    def wait_longer():
        """Stretch the current wait, so a loaded test machine cannot outlast it mid-test."""
        redis().hset(key, "next_at", time.time() + 60)

    for _ in range(login_throttle.FREE_FAILURES - 1):
        assert token_login(client, "admin", "guess", attacker).status_code == 401
    assert not redis().hget(key, "next_at") or float(redis().hget(key, "next_at")) <= time.time()
    started = time.time()
    assert token_login(client, "admin", "guess", attacker).status_code == 401
    waited = float(redis().hget(key, "next_at")) - started  # the third failure costs 2 s
    assert 2 - 0.01 <= waited <= 2 + (time.time() - started)
    # The attacker must now wait; even the right password is not checked.
    wait_longer()
    resp = token_login(client, "admin", ADMIN_PASSWORD, attacker)
    assert resp.status_code == 429 and resp.json["error"]["code"] == "throttled"
    assert 55 <= int(resp.headers["Retry-After"]) <= 60
    assert token_login(client, "admin", "guess", attacker).status_code == 429
    # The web form answers the attacker 429 with Retry-After as well.
    _, resp = sign_in(app, "admin", "guess", address=attacker)
    assert resp.status_code == 429 and int(resp.headers["Retry-After"]) > 50
    assert b"wait" in resp.data
    # The admin, from his own address, signs in at once, by API and by the form.
    assert token_login(client, "admin", ADMIN_PASSWORD, "192.0.2.10").status_code == 201
    _, resp = sign_in(app, "admin", address="192.0.2.10")
    assert resp.status_code == 302
    # When the wait is over, one more failure doubles it (4 s).
    redis().hset(key, "next_at", 0)
    started = time.time()
    assert token_login(client, "admin", "guess", attacker).status_code == 401
    waited = float(redis().hget(key, "next_at")) - started
    assert 4 - 0.01 <= waited <= 4 + (time.time() - started)
    wait_longer()
    assert token_login(client, "admin", ADMIN_PASSWORD, attacker).status_code == 429
    # Audit: each checked failure, and only the first refusal of each waiting period.
    rows = session.execute(select(AuditLog).where(AuditLog.action == "auth.login", AuditLog.outcome == "denied")
                           .order_by(AuditLog.id)).scalars().all()
    reasons = [(r.detail["reason"], r.detail.get("address")) for r in rows]
    assert reasons == ([("bad password", attacker)] * 3 + [("delayed", attacker)]
                       + [("bad password", attacker), ("delayed", attacker)])
    assert 55 <= rows[3].detail["retry_after_s"] <= 60


def test_the_delay_is_capped_and_an_admin_can_clear_it(app, api, session, admin_user):
    make_user(session, "olga", "operator")
    olga = session.execute(select(User).where(User.username == "olga")).scalar_one()
    client = app.test_client()
    address = "198.51.100.7"
    from server.core.redis_conn import redis

    # Many failures in the past: the wait stops growing at the cap.
    key = login_throttle._account_key("olga", address)
    redis().hset(key, mapping={"failures": 40, "next_at": 0})
    redis().sadd(login_throttle._addresses_key("olga"), address)
    assert token_login(client, "olga", "guess", address).status_code == 401
    resp = token_login(client, "olga", ADMIN_PASSWORD, address)
    assert resp.status_code == 429
    assert login_throttle.MAX_DELAY_S - 5 <= int(resp.headers["Retry-After"]) <= login_throttle.MAX_DELAY_S
    status, detail = api.get(f"/api/v1/users/{olga.id}")
    assert status == 200 and detail["login_delays"][0]["address"] == address
    assert detail["login_delays"][0]["failures"] == 41 and detail["login_delays"][0]["retry_at"]
    page = signed_in(app, "admin").get(f"/admin/users/{olga.id}").get_data(as_text=True)
    assert address in page and "Clear these delays" in page
    status, body = api.patch(f"/api/v1/users/{olga.id}", {"unlock": True})
    assert status == 200 and body["login_delays"] == []
    assert token_login(client, "olga", ADMIN_PASSWORD, address).status_code == 201


def test_a_success_clears_the_delay_for_its_address_only(app, admin_user):
    client = app.test_client()
    for address in ("198.51.100.1", "198.51.100.2"):
        for _ in range(login_throttle.FREE_FAILURES - 1):
            assert token_login(client, "admin", "guess", address).status_code == 401
    assert token_login(client, "admin", ADMIN_PASSWORD, "198.51.100.1").status_code == 201
    # .1 starts again from zero; .2 still has its failures: one more and it waits.
    assert token_login(client, "admin", "guess", "198.51.100.1").status_code == 401
    assert token_login(client, "admin", "guess", "198.51.100.1").status_code == 401
    assert token_login(client, "admin", "guess", "198.51.100.2").status_code == 401
    assert token_login(client, "admin", ADMIN_PASSWORD, "198.51.100.2").status_code == 429


def test_unknown_names_are_delayed_like_real_ones(app, admin_user):
    client = app.test_client()
    for _ in range(login_throttle.FREE_FAILURES):
        assert token_login(client, "nobody", "guess", "198.51.100.9").status_code == 401
    assert token_login(client, "nobody", "guess", "198.51.100.9").status_code == 429


def test_one_address_spraying_names_is_stopped_for_a_window(app, admin_user, monkeypatch, session):
    monkeypatch.setattr(login_throttle, "MAX_FAILURES_PER_ADDRESS", 5)
    client = app.test_client()
    for i in range(5):
        assert token_login(client, f"guess{i}", "x", "198.51.100.20").status_code == 401
    resp = token_login(client, "admin", ADMIN_PASSWORD, "198.51.100.20")
    assert resp.status_code == 429 and int(resp.headers["Retry-After"]) > 800
    assert token_login(client, "admin", ADMIN_PASSWORD, "198.51.100.21").status_code == 201
    last = session.execute(select(AuditLog).where(AuditLog.action == "auth.login", AuditLog.outcome == "denied")
                           .order_by(AuditLog.id.desc())).scalars().first()
    assert last.detail["reason"] == "address throttled"


def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(app, admin_user):
    client = app.test_client()
    # No trusted proxy: rotating X-Forwarded-For does not give the attacker new addresses.
    for i in range(login_throttle.FREE_FAILURES):
        resp = token_login(client, "admin", "guess", headers={"X-Forwarded-For": f"203.0.113.{i}"})
        assert resp.status_code == 401
    resp = token_login(client, "admin", ADMIN_PASSWORD, headers={"X-Forwarded-For": "203.0.113.99"})
    assert resp.status_code == 429


def test_a_trusted_proxy_names_the_client(app, admin_user):
    from server.core.redis_conn import redis

    app.config["TM"].trusted_proxies = parse_trusted_proxies("10.9.0.0/16, 127.0.0.1")
    client = app.test_client()

    def login(password, forwarded):
        return client.post("/api/v1/auth/token", json={"username": "admin", "password": password},
                           environ_base={"REMOTE_ADDR": "10.9.1.2"}, headers={"X-Forwarded-For": forwarded})

    # A failure through the proxy counts against the client it names, not the proxy.
    assert login("guess", "203.0.113.7").status_code == 401
    assert [d.address for d in login_throttle.delays_for("admin")] == ["203.0.113.7"]
    # An attacker at 203.0.113.5 who has failed many times must wait ...
    redis().hset(login_throttle._account_key("admin", "203.0.113.5"),
                 mapping={"failures": 9, "next_at": time.time() + 600})
    assert login(ADMIN_PASSWORD, "203.0.113.5").status_code == 429
    # ... and putting another address to the left of the one the proxy saw changes nothing;
    assert login(ADMIN_PASSWORD, "192.0.2.1, 203.0.113.5").status_code == 429
    # through a chain of trusted proxies, the first untrusted hop is the client;
    assert login(ADMIN_PASSWORD, "203.0.113.5, 127.0.0.1").status_code == 429
    # the real user behind the same proxy, from another address, is not slowed;
    assert login(ADMIN_PASSWORD, "203.0.113.6").status_code == 201
    # garbage in the header stops the walk at the last good address (the proxy itself).
    assert login(ADMIN_PASSWORD, "not-an-ip").status_code == 201
    # A peer that is not a trusted proxy cannot pick its address with the header.
    resp = client.post("/api/v1/auth/token", json={"username": "admin", "password": ADMIN_PASSWORD},
                       environ_base={"REMOTE_ADDR": "203.0.113.5"}, headers={"X-Forwarded-For": "203.0.113.6"})
    assert resp.status_code == 429


def test_trusted_proxies_setting_is_validated(monkeypatch, env):
    from server.core.config import load_settings

    assert parse_trusted_proxies("") == ()
    assert [str(n) for n in parse_trusted_proxies("10.0.0.1, 192.168.0.0/24,::1")] == [
        "10.0.0.1/32", "192.168.0.0/24", "::1/128"]
    with pytest.raises(ValueError, match="TASKMANAGER_TRUSTED_PROXIES: 'proxy.local'"):
        parse_trusted_proxies("10.0.0.1,proxy.local")
    monkeypatch.setenv("TASKMANAGER_TRUSTED_PROXIES", "10.1.2.3")
    assert [str(n) for n in load_settings().trusted_proxies] == ["10.1.2.3/32"]
    monkeypatch.delenv("TASKMANAGER_TRUSTED_PROXIES")
    assert load_settings().trusted_proxies == ()


# ------------------------------------------------------------------ security headers


def _assert_headers(resp, *, rq: bool = False) -> None:
    csp = resp.headers.get("Content-Security-Policy", "")
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";") if d.strip())
    assert "frame-ancestors" in directives and directives["frame-ancestors"] == "'none'"
    assert directives["object-src"] == "'none'"
    if rq:
        assert "'unsafe-inline'" in directives["script-src"]
    else:
        assert directives["script-src"] == "'self'", csp
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] in ("same-origin", "no-referrer", "strict-origin")


def test_every_kind_of_response_carries_the_security_headers(app, api, admin_user):
    anon = app.test_client()
    for resp in (anon.get("/login"), anon.get("/executions"), anon.get("/api/v1/me"), anon.get("/healthz"),
                 anon.get("/static/app.js"), anon.get("/no-such-page"), api.client.get("/api/v1/me",
                 headers={"Authorization": f"Bearer {api.token}"}), token_login(anon, "x", "y")):
        _assert_headers(resp)
    admin = signed_in(app, "admin")
    for path in ("/dashboard", "/executions", "/schedules", "/tasks/new"):
        _assert_headers(admin.get(path))
    _assert_headers(admin.get("/admin/rq/"), rq=True)


def test_pages_have_no_inline_script(app, api, session):
    from resource_factories import host, task

    host(api, "app1")
    t = task(api, "deploy", hosts=["app1"], commands=["echo hi"])
    status, run = api.post(f"/api/v1/tasks/{t['id']}/executions", {})
    assert status == 202
    status, sched = api.post(f"/api/v1/tasks/{t['id']}/schedules", {"cron": "0 6 * * *", "timezone": "UTC"})
    assert status == 201, sched
    admin = signed_in(app, "admin")
    pages = ["/dashboard", "/executions", f"/executions/{run['id']}", f"/tasks/{t['id']}", "/tasks/new",
             f"/tasks/{t['id']}/edit", "/schedules", f"/schedules/new?task={t['id']}", f"/schedules/{sched['id']}",
             "/hosts", "/credentials/new", "/approvals", "/account", "/admin/users", "/login"]
    for path in pages:
        resp = admin.get(path)
        assert resp.status_code == 200, path
        html = resp.get_data(as_text=True)
        scripts = re.findall(r"<script\b[^>]*>", html)
        assert scripts and all("src=" in s for s in scripts), (path, scripts)
        assert not re.search(r"<script\b[^>]*>\s*[^<\s]", html), path  # no body in any script tag
        assert not re.search(r"\son[a-z]+\s*=", html, re.I), path  # no inline event handlers
        assert "javascript:" not in html, path
    live = admin.get(f"/executions/{run['id']}").get_data(as_text=True)
    assert f'data-live-url="/executions/{run["id"]}/live"' in live or "data-live-url=" in live
    assert 'data-preview-url="/api/v1/schedules/preview"' in admin.get("/schedules/new").get_data(as_text=True)


# ------------------------------------------------------------------ next= redirects


@pytest.mark.parametrize("target", [
    "/%09/evil.example/", "//evil.example", "/%2F/evil.example", "/%5Cevil.example", "%5C%5Cevil.example",
    "/%5C/evil.example", "https://evil.example", "https:%2F%2Fevil.example", "javascript:alert(1)",
    "JaVaScRiPt%3Aalert(1)", "http:/evil.example", "/%0D%0A/evil.example", "/%0A/evil.example", "%09//evil.example",
    "%20//evil.example", "evil.example", "/%7F/evil.example", "/%C2%85/evil.example", "", "%2F%2Fevil.example",
])
def test_next_never_leaves_the_site(app, admin_user, target):
    _, resp = sign_in(app, "admin", next_=target)
    assert resp.status_code == 302
    assert resp.headers["Location"] == "/", (target, resp.headers["Location"])


@pytest.mark.parametrize("target, location", [("/executions%3Ftask%3D1", "/executions?task=1"),
                                              ("/admin/rq/", "/admin/rq/"), ("/", "/"), ("/schedules/3", "/schedules/3")])
def test_next_keeps_paths_on_the_site(app, admin_user, target, location):
    _, resp = sign_in(app, "admin", next_=target)
    assert resp.status_code == 302 and resp.headers["Location"] == location


# ------------------------------------------------------------------ migration


def test_upgrade_from_0001_keeps_users_and_their_tokens(app):
    """0002 drops the lock columns in place: users, and the rows pointing at them, survive."""
    from sqlalchemy import inspect, text

    from server.core import db
    from server.core.db import Base
    from server.core.migrate import upgrade

    engine = db.engine()
    db.session.remove()
    Base.metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    upgrade("0001")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, username, password_hash, role, is_active, must_change_password, "
                          "failed_logins, created_at) VALUES (1, 'old', 'x', 'admin', true, false, 4, :now)"),
                     {"now": utcnow().replace(tzinfo=None)})
        conn.execute(text("INSERT INTO api_tokens (user_id, name, token_hash, prefix, created_at) "
                          "VALUES (1, 'kept', :h, 'tm_x', :now)"), {"h": "a" * 64, "now": utcnow().replace(tzinfo=None)})
    upgrade("head")
    columns = {c["name"] for c in inspect(engine).get_columns("users")}
    assert "failed_logins" not in columns and "locked_until" not in columns
    assert "web_sessions" in inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT username FROM users")).scalar_one() == "old"
        assert conn.execute(text("SELECT name FROM api_tokens WHERE user_id = 1")).scalar_one() == "kept"


def test_signing_in_again_ends_the_browsers_previous_session(app, admin_user, session):
    make_user(session, "olga", "operator")
    browser = signed_in(app, "olga")
    before = copy_of(app, browser)
    old_token = form_token(browser)
    page = browser.get("/login").get_data(as_text=True)
    resp = browser.post("/login", data={"username": "olga", "password": ADMIN_PASSWORD, "csrf_token": csrf_token(page)})
    assert resp.status_code == 302
    assert_signed_out(before)  # the superseded session is over
    assert_signed_in(browser)
    # Same user over his live session: the forms he has open keep working.
    assert browser.post("/api/v1/tokens", json={"name": "a"}, headers={"X-CSRFToken": old_token}).status_code == 201
    # Someone else signing in on this browser gets a new CSRF token.
    page = browser.get("/login").get_data(as_text=True)
    browser.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD, "csrf_token": csrf_token(page)})
    assert browser.post("/api/v1/tokens", json={"name": "b"}, headers={"X-CSRFToken": old_token}).status_code == 400


def test_an_anonymous_cookie_s_csrf_token_does_not_survive_sign_in(app, admin_user):
    client = app.test_client()
    planted = csrf_token(client.get("/login").get_data(as_text=True))
    client.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD, "csrf_token": planted})
    # The token the anonymous cookie carried no longer passes.
    assert client.post("/api/v1/tokens", json={"name": "x"}, headers={"X-CSRFToken": planted}).status_code == 400
    assert client.post("/api/v1/tokens", json={"name": "x"},
                       headers={"X-CSRFToken": form_token(client)}).status_code == 201


def test_activity_moves_last_seen_coarsely(app, admin_user, session):
    browser = signed_in(app, "admin")
    earlier = utcnow() - timedelta(minutes=5)
    session.execute(update(WebSession).values(last_seen_at=earlier))
    session.commit()
    assert_signed_in(browser)
    session.expire_all()
    seen = session.execute(select(WebSession)).scalar_one().last_seen_at
    assert seen > earlier + timedelta(minutes=4)
    assert_signed_in(browser)  # within a minute: no write
    session.expire_all()
    assert session.execute(select(WebSession)).scalar_one().last_seen_at == seen
