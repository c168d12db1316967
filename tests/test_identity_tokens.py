"""Scoped, expiring API tokens: scopes within the owner's rights, refused at once when
expired or revoked, last use shown; account changes need a full-scope token."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from conftest import ADMIN_PASSWORD, Api, make_user


def exchange(client, username, **extra):
    resp = client.post("/api/v1/auth/token", json={"username": username, "password": ADMIN_PASSWORD, **extra})
    return resp.status_code, resp.get_json()


def test_scopes_limit_what_a_token_does(app, session, admin_user):
    client = app.test_client()
    status, body = exchange(client, "admin", scopes=["read"], name="ro")
    assert status == 201, body
    ro = Api(client, body["token"])
    assert ro.get("/api/v1/hosts")[0] == 200
    status, err = ro.post("/api/v1/hosts", {"name": "h1", "address": "127.0.0.1"})
    assert status == 403 and err["error"]["code"] == "insufficient_scope", err
    # A read-only token cannot mint a wider one, nor change the account (MFA).
    status, err = ro.post("/api/v1/tokens", {"scopes": ["read", "admin"]})
    assert status == 403 and err["error"]["code"] == "insufficient_scope"
    assert ro.post("/api/v1/me/mfa/totp")[0] == 403

    status, body = exchange(client, "admin", scopes=["admin"])
    assert status == 201
    writer = Api(client, body["token"])
    assert writer.post("/api/v1/hosts", {"name": "h1", "address": "127.0.0.1"})[0] == 201
    assert writer.get("/api/v1/hosts")[0] == 403  # no 'read'

    full = Api(client, exchange(client, "admin")[1]["token"])
    status, listed = full.get("/api/v1/tokens")
    by_name = {t["name"]: t for t in listed["items"]}
    assert by_name["ro"]["scopes"] == ["read"] and by_name["ro"]["last_used_at"] is not None
    assert by_name["api"]["expires_at"] is None


def test_scopes_stay_within_the_role(app, session):
    make_user(session, "audra", "auditor")
    make_user(session, "opal", "operator")
    client = app.test_client()
    status, err = exchange(client, "audra", scopes=["read", "execute"])
    assert status == 422 and err["error"]["field"] == "scopes" and "execute" in err["error"]["message"]
    status, err = exchange(client, "audra", scopes=["admin"])
    assert status == 422 and err["error"]["field"] == "scopes"
    status, err = exchange(client, "opal", scopes=["fly"])
    assert status == 422 and "fly" in err["error"]["message"]
    status, body = exchange(client, "opal")
    listed = Api(client, body["token"]).get("/api/v1/tokens")[1]["items"]
    assert listed[0]["scopes"] == ["admin", "approve", "execute", "read"]  # policies may let him edit


def test_demoted_owner_token_shrinks(app, session, api):
    from server.core.models import User

    make_user(session, "ann", "author")
    client = app.test_client()
    token = Api(client, exchange(client, "ann")[1]["token"])
    assert token.post("/api/v1/hosts", {"name": "h2", "address": "127.0.0.1"})[0] == 201
    ann = session.execute(select(User).where(User.username == "ann")).scalar_one()
    assert api.patch(f"/api/v1/users/{ann.id}", {"role": "auditor"})[0] == 200
    status, err = token.post("/api/v1/hosts", {"name": "h3", "address": "127.0.0.1"})
    assert status == 403 and err["error"]["code"] == "forbidden"  # his role decides, as before scopes
    status, err = token.post("/api/v1/tokens", {"name": "wider", "scopes": ["admin"]})
    assert status == 422 and err["error"]["field"] == "scopes"  # an auditor holds no "admin" scope


def test_expired_and_revoked_tokens_are_refused_at_once(app, session, admin_user):
    from server.core.models import ApiToken, utcnow

    client = app.test_client()
    status, err = exchange(client, "admin", expires_in_s=5)
    assert status == 422 and err["error"]["field"] == "expires_in_s"
    status, body = exchange(client, "admin", expires_in_s=3600, name="short")
    assert status == 201
    short = Api(client, body["token"])
    assert short.get("/api/v1/me")[0] == 200
    row = session.execute(select(ApiToken).where(ApiToken.name == "short")).scalar_one()
    assert row.expires_at - utcnow() > timedelta(minutes=59)
    row.expires_at = utcnow() - timedelta(seconds=1)
    session.commit()
    status, err = short.get("/api/v1/me")
    assert status == 401 and "expired" in err["error"]["message"]

    other = Api(client, exchange(client, "admin", name="other")[1]["token"])
    full = Api(client, exchange(client, "admin")[1]["token"])
    other_id = session.execute(select(ApiToken.id).where(ApiToken.name == "other")).scalar_one()
    assert full.delete(f"/api/v1/tokens/{other_id}")[0] == 204
    assert other.get("/api/v1/me")[0] == 401
    listed = {t["name"]: t for t in full.get("/api/v1/tokens")[1]["items"]}
    assert listed["short"]["active"] is False and listed["other"]["active"] is False


def test_admin_created_user_must_change_password_first(app, session, api):
    status, body = api.post("/api/v1/users", {"username": "newbie", "role": "operator", "password": "given-Pass-1"})
    assert status == 201 and body["must_change_password"] is True and body["source"] == "local"
    client = app.test_client()
    resp = client.post("/api/v1/auth/token", json={"username": "newbie", "password": "given-Pass-1"})
    assert resp.status_code == 201  # API clients sign in as the contract says; the web asks for a new password
    from resource_factories import csrf_token

    page = client.get("/login").get_data(as_text=True)
    resp = client.post("/login", data={"username": "newbie", "password": "given-Pass-1", "csrf_token": csrf_token(page)})
    assert resp.status_code == 302
    resp = client.get("/tasks")
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/account")
    page = client.get("/account").get_data(as_text=True)
    resp = client.post("/account/password", data={"current_password": "given-Pass-1", "new_password": "own-Pass-22",
                                                  "confirm": "own-Pass-22", "csrf_token": csrf_token(page)})
    assert resp.status_code == 302
    assert client.get("/tasks").status_code == 200
    resp = client.post("/api/v1/auth/token", json={"username": "newbie", "password": "own-Pass-22"})
    assert resp.status_code == 201
