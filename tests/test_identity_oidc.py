"""OpenID Connect sign-in against a real provider (tests/oidc_provider.py, Authlib's
provider side) through the authorization code flow: in chromium (Playwright) for the real
thing, and by plain HTTP for the refusals: forged state, an ID token for another audience or
signed with a key the provider does not publish, an unmapped user."""
from __future__ import annotations

import os
from urllib.parse import urlparse

import pytest
import requests
from sqlalchemy import select

from conftest import Api
from oidc_provider import OpenIDProvider

CHROMIUM = "/usr/bin/chromium"
USERS = {"dana": ("dana-Pass-1", ["ops", "sre"]), "erin": ("erin-Pass-1", ["tm-admins"]),
         "finn": ("finn-Pass-1", ["marketing"])}


@pytest.fixture(scope="module")
def provider():
    with OpenIDProvider(USERS) as op:
        yield op


def configure(api: Api, provider, redirect_uris: list[str]) -> None:
    provider.clients.clear()
    provider.add_client("task-manager", "client-Secret-9", redirect_uris[0])
    provider.clients["task-manager"].redirect_uris.extend(redirect_uris[1:])
    assert api.post("/api/v1/credentials", {"name": "oidc-client", "kind": "password", "username": "task-manager",
                                            "secret": "client-Secret-9"})[0] == 201
    api.post("/api/v1/policies", {"name": "sre-runs", "permissions": ["view", "execute"]})
    status, body = api.call("PUT", "/api/v1/settings/oidc", {
        "issuer": provider.issuer, "client_id": "task-manager", "client_credential": "oidc-client",
        "group_roles": {"ops": "operator", "tm-admins": "admin"}, "group_policies": {"sre": ["sre-runs"]}})
    assert status == 200, body
    assert "client-Secret-9" not in str(api.get("/api/v1/settings/oidc")[1])


def flow(client, user: str, *, state: str | None = None, seen: list | None = None):
    """The authorization code flow by plain HTTP: our app → the provider's login → back."""
    resp = client.get("/login/oidc")
    assert resp.status_code == 302, resp.data
    authorize = resp.headers["Location"]
    assert "code_challenge=" in authorize and "code_challenge_method=S256" in authorize and "nonce=" in authorize
    back = requests.post(authorize, data={"username": user, "password": USERS[user][0]}, allow_redirects=False,
                         timeout=10)
    assert back.status_code == 302, back.text
    target = urlparse(back.headers["Location"])
    query = target.query
    if state is not None:
        query = "&".join(p if not p.startswith("state=") else f"state={state}" for p in query.split("&"))
    if seen is not None:
        seen.append(f"{target.path}?{query}")
    return client.get(f"{target.path}?{query}")


def test_refusals_by_plain_http(app, session, api, provider):
    from server.core.models import Policy, User

    configure(api, provider, ["http://localhost/login/oidc/callback"])
    client = app.test_client()
    resp = flow(client, "dana", state="forged-state")
    assert resp.status_code == 401 and "state" in resp.get_data(as_text=True)
    assert client.get("/tasks").status_code == 302

    provider.forge_audience = True
    try:
        resp = flow(client, "dana")
    finally:
        provider.forge_audience = False
    assert resp.status_code == 401 and "ID token was refused" in resp.get_data(as_text=True)
    provider.forge_signature = True
    try:
        resp = flow(client, "dana")
    finally:
        provider.forge_signature = False
    assert resp.status_code == 401 and "ID token was refused" in resp.get_data(as_text=True)
    resp = flow(client, "finn")  # no mapped group
    assert resp.status_code == 401 and "mapped" in resp.get_data(as_text=True)
    assert session.execute(select(User).where(User.username.in_(["dana", "finn"]))).first() is None

    callback: list[str] = []
    resp = flow(client, "dana", seen=callback)
    assert resp.status_code == 302, resp.data
    assert client.get("/tasks").status_code == 200
    dana = session.execute(select(User).where(User.username == "dana")).scalar_one()
    assert (dana.role, dana.auth_source, dana.external_id) == ("operator", "oidc", f"{provider.issuer}|sub-dana")
    assert "dana" in [u.username for u in session.execute(select(Policy).where(Policy.name == "sre-runs")).scalar_one().users]
    # A replayed callback (the same code and state again) is refused: the state was used up.
    resp = app.test_client().get(callback[0])
    assert resp.status_code == 401 and "no sign-in in progress" in resp.get_data(as_text=True)
    audit = [(r["action"], r["outcome"], r["detail"].get("method")) for r in
             api.get("/api/v1/audit?per_page=300")[1]["items"]]
    assert ("auth.login", "ok", "oidc") in audit and ("auth.login", "denied", "oidc") in audit


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed")
def test_sign_in_with_the_provider_in_chromium(app, session, api, provider, live_server):
    from playwright.sync_api import sync_playwright

    from server.core.models import User

    configure(api, provider, [f"{live_server}/login/oidc/callback"])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            page.goto(f"{live_server}/login")
            page.click("#sso")
            page.wait_for_url(f"{provider.issuer}/authorize*")
            page.fill("input[name=username]", "erin")
            page.fill("input[name=password]", "erin-Pass-1")
            page.click("button[type=submit]")
            page.wait_for_url(f"{live_server}/dashboard*")
            page.goto(f"{live_server}/account")
            assert "oidc" in page.content()  # the session's sign-in method
        finally:
            browser.close()
    erin = session.execute(select(User).where(User.username == "erin")).scalar_one()
    assert (erin.role, erin.auth_source) == ("admin", "oidc")
