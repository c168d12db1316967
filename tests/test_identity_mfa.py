"""TOTP: enrolment with a locally drawn QR code, codes at sign-in (API and web), replays and
wrong codes refused and throttled, recovery codes once, the per-role requirement, step-up
before approvals and credential edits; web sessions: list, timeouts, sign out everywhere."""
from __future__ import annotations

import time
from datetime import timedelta

import pyotp
import pytest
from sqlalchemy import select

from conftest import ADMIN_PASSWORD, Api, make_user
from resource_factories import csrf_token


def code(secret: str, steps_ahead: int = 0) -> str:
    return pyotp.TOTP(secret).at(time.time() + 30 * steps_ahead)


def exchange(client, username="admin", **extra):
    resp = client.post("/api/v1/auth/token", json={"username": username, "password": ADMIN_PASSWORD, **extra},
                       environ_base=extra.pop("environ_base", {}) if "environ_base" in extra else {})
    return resp.status_code, resp.get_json()


def enrol(api: Api) -> tuple[str, list[str]]:
    status, body = api.post("/api/v1/me/mfa/totp")
    assert status == 201, body
    assert body["otpauth_uri"].startswith("otpauth://totp/") and body["secret"] in body["otpauth_uri"]
    assert body["qr_svg"].startswith("<svg") and "http" not in body["qr_svg"].split("xmlns", 1)[0]
    status, err = api.post("/api/v1/me/mfa/totp/confirm", {"code": "000000" if code(body["secret"]) != "000000"
                                                           else "111111"})
    assert status == 401 and err["error"]["code"] == "invalid_otp"
    status, done = api.post("/api/v1/me/mfa/totp/confirm", {"code": code(body["secret"], -1)})
    assert status == 200 and len(done["recovery_codes"]) == 10
    return body["secret"], done["recovery_codes"]


def test_totp_on_the_token_exchange(app, session, api):
    from server.core.models import User

    secret, recovery = enrol(api)
    admin = session.execute(select(User).where(User.username == "admin")).scalar_one()
    session.refresh(admin)
    assert admin.recovery_codes and recovery[0] not in str(admin.recovery_codes)  # hashed
    assert secret.encode() not in admin.totp_secret  # vault-encrypted
    client = app.test_client()
    status, err = exchange(client)
    assert status == 401 and err["error"]["code"] == "otp_required"
    status, err = exchange(client, otp="12345")
    assert status == 401 and err["error"]["code"] == "invalid_otp"
    fresh = code(secret, 1)  # the enrolment used the current step
    status, body = exchange(client, otp=fresh)
    assert status == 201, body
    status, err = exchange(client, otp=fresh)  # replayed
    assert status == 401 and err["error"]["code"] == "invalid_otp"
    status, body = exchange(client, otp=recovery[0])
    assert status == 201
    status, err = exchange(client, otp=recovery[0])  # each recovery code works once
    assert status == 401
    assert Api(client, body["token"]).get("/api/v1/me/mfa")[1] == {
        "totp": True, "required": False, "recovery_codes_left": 9, "reauth_minutes": 15}
    actions = [r["action"] for r in api.get("/api/v1/audit?per_page=200")[1]["items"]]
    assert "mfa.enrol" in actions and "mfa.verify" in actions


def test_wrong_codes_are_throttled_like_passwords(app, session, api):
    enrol(api)
    client = app.test_client()
    statuses = [exchange(client, otp="999999")[0] for _ in range(5)]
    assert statuses[:3] == [401, 401, 401] and 429 in statuses[3:], statuses


def test_mfa_required_per_role(app, session, monkeypatch):
    from server.core.models import utcnow

    monkeypatch.setenv("TASKMANAGER_MFA_ROLES", "admin,approver")
    admin = make_user(session, "admin", "admin")
    make_user(session, "opal", "operator")
    client = app.test_client()
    # A new account has a grace period (default 7 days): reminded, not yet held to it.
    assert exchange(client)[0] == 201
    admin.created_at = utcnow() - timedelta(days=7, seconds=1)
    session.commit()
    status, err = exchange(client)
    assert status == 403 and err["error"]["code"] == "mfa_enrollment_required"
    assert exchange(client, "opal")[0] == 201
    # The web sign-in works, and leads to the enrolment page until a factor is set up.
    page = client.get("/login").get_data(as_text=True)
    resp = client.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD,
                                       "csrf_token": csrf_token(page)})
    assert resp.status_code == 302
    resp = client.get("/tasks")
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/account/mfa")
    page = client.get("/account/mfa").get_data(as_text=True)
    assert "<svg" in page
    secret = page.split('data-secret="', 1)[1].split('"', 1)[0]
    resp = client.post("/account/mfa/confirm", data={"code": code(secret), "csrf_token": csrf_token(page)})
    assert resp.status_code == 200 and "recovery-codes" in resp.get_data(as_text=True)
    assert client.get("/tasks").status_code == 200
    # The policy is the admin's to change; a required factor cannot be turned off.
    token = exchange(client, otp=code(secret, 1))[1]["token"]
    admin_api = Api(client, token)
    assert admin_api.get("/api/v1/settings/mfa")[1] == {"required_roles": ["admin", "approver"], "reauth_minutes": 15,
                                                        "grace_days": 7}
    status, err = admin_api.delete("/api/v1/me/mfa/totp", json={"code": code(secret, -1)})
    assert status == 422
    status, err = admin_api.call("PUT", "/api/v1/settings/mfa", {"required_roles": ["root"]})
    assert status == 422 and err["error"]["field"] == "required_roles"
    assert admin_api.call("PUT", "/api/v1/settings/mfa", {"required_roles": ["admin"], "reauth_minutes": 5})[0] == 200


def test_web_sign_in_asks_for_the_code(app, session, api):
    secret, _ = enrol(api)
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    resp = client.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD, "csrf_token": csrf_token(page)})
    assert resp.status_code == 200 and 'name="otp"' in resp.get_data(as_text=True)
    assert client.get("/tasks").status_code == 302  # not signed in yet
    otp_page = resp.get_data(as_text=True)
    resp = client.post("/login/otp", data={"otp": "000001", "csrf_token": csrf_token(otp_page)})
    assert resp.status_code == 401
    resp = client.post("/login/otp", data={"otp": code(secret, 1), "csrf_token": csrf_token(otp_page)})
    assert resp.status_code == 302
    assert client.get("/tasks").status_code == 200


def test_step_up_before_credential_edits(app, session, api):
    from server.core.models import ApiToken, utcnow

    secret, _ = enrol(api)
    client = app.test_client()
    token = exchange(client, otp=code(secret))[1]["token"]
    fresh = Api(client, token)
    cred = {"name": "c1", "kind": "password", "username": "u", "secret": "s3cret-pw"}
    assert fresh.post("/api/v1/credentials", cred)[0] == 201
    row = session.execute(select(ApiToken).where(ApiToken.mfa_at.is_not(None))).scalars().first()
    row.mfa_at = utcnow() - timedelta(minutes=16)
    session.commit()
    status, err = fresh.post("/api/v1/credentials", {**cred, "name": "c2"})
    assert status == 401 and err["error"]["code"] == "mfa_step_up_required"
    assert fresh.get("/api/v1/credentials")[0] == 200  # reading needs no step-up
    for decision in ("/api/v1/executions/1/approve", "/api/v1/schedules/1/reject"):
        status, err = fresh.post(decision, {})
        assert status == 401 and err["error"]["code"] == "mfa_step_up_required", decision
    status, _ = fresh.post("/api/v1/credentials", {**cred, "name": "c2"}, headers={"X-TM-OTP": code(secret, 1)})
    assert status == 201


def test_sessions_list_timeouts_and_sign_out_everywhere(app, session, admin_user):
    from server.core.models import WebSession, utcnow

    from test_route_matrix import IsolatedClient

    app.test_client_class = IsolatedClient  # no flask-login user cached in g between browsers
    browsers = [app.test_client() for _ in range(2)]
    for b in browsers:
        page = b.get("/login").get_data(as_text=True)
        assert b.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD,
                                      "csrf_token": csrf_token(page)}).status_code == 302
    listed = browsers[0].get("/api/v1/me/sessions").get_json()["items"]
    assert len(listed) == 2 and sum(s["current"] for s in listed) == 1 and listed[0]["method"] == "password"
    page = browsers[0].get("/account").get_data(as_text=True)
    assert "Sign out everywhere" in page
    # Absolute lifetime: however active, a session ends that long after its sign-in.
    row = session.execute(select(WebSession).order_by(WebSession.id)).scalars().first()
    row.created_at = utcnow() - app.config["SESSION_ABSOLUTE_LIFETIME"] - timedelta(seconds=1)
    session.commit()
    assert browsers[0].get("/tasks").status_code == 302
    assert browsers[1].get("/tasks").status_code == 200
    resp = browsers[1].post("/account/sessions/end-all", data={"csrf_token": csrf_token(
        browsers[1].get("/account").get_data(as_text=True))})
    assert resp.status_code == 302
    assert browsers[1].get("/tasks").status_code == 302


@pytest.mark.parametrize("bad", [{"code": 123}, {}])
def test_confirm_validates_input(api, bad):
    api.post("/api/v1/me/mfa/totp")
    status, err = api.post("/api/v1/me/mfa/totp/confirm", bad)
    assert status == 422 and err["error"]["field"] == "code"


def test_web_step_up_and_admin_reset(app, session, api):
    from server.core.models import User, WebSession, utcnow

    secret, _ = enrol(api)
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    otp_page = client.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD,
                                           "csrf_token": csrf_token(page)}).get_data(as_text=True)
    assert client.post("/login/otp", data={"otp": code(secret), "csrf_token": csrf_token(otp_page)}).status_code == 302
    for row in session.execute(select(WebSession)).scalars():
        row.mfa_at = utcnow() - timedelta(minutes=20)
    session.commit()
    form = client.get("/credentials/new").get_data(as_text=True)
    data = {"name": "web-cred", "kind": "password", "username": "u", "secret_password": "pw-123456",
            "csrf_token": csrf_token(form)}
    resp = client.post("/credentials/new", data=data, headers={"Referer": "http://localhost/credentials/new"})
    assert resp.status_code == 302 and "/account/mfa/verify" in resp.headers["Location"]
    verify = client.get(resp.headers["Location"]).get_data(as_text=True)
    resp = client.post(resp.headers["Location"], data={"otp": code(secret, 1), "csrf_token": csrf_token(verify)})
    assert resp.status_code == 302 and resp.headers["Location"] == "/credentials/new"
    assert client.post("/credentials/new", data=data).status_code == 302
    assert api.get("/api/v1/credentials")[1]["items"][0]["name"] == "web-cred"

    # A lost device: an admin resets another user's factor; he enrols again.
    make_user(session, "ola", "operator")
    ola_api = Api(client, exchange(client, "ola")[1]["token"])
    ola_secret, _ = enrol(ola_api)
    ola = session.execute(select(User).where(User.username == "ola")).scalar_one()
    status, body = api.patch(f"/api/v1/users/{ola.id}", {"reset_mfa": True}, headers={"X-TM-OTP": code(secret, 1)})
    assert status == 200 and body["mfa"] is False
    assert exchange(client, "ola")[0] == 201  # no code asked any more
    assert ola_secret
