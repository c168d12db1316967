"""LDAP sign-in against a real slapd: users found by a service bind whose password is a
vault credential, nested groups mapped to a role (highest wins) and to policies at every
sign-in, a locked (disabled) account, StartTLS and LDAPS with certificate checks, the
"test" endpoint, and a directory that is down (a clear message; local admins still sign in)."""
from __future__ import annotations

import ldap3
import pytest
from sqlalchemy import select

import protolab
from conftest import ADMIN_PASSWORD, Api

S = protolab.Slapd.SUFFIX
OPS = f"cn=ops,ou=groups,{S}"
SRE = f"cn=sre,ou=groups,{S}"          # nested inside ops
ADMINS = f"cn=tm-admins,ou=groups,{S}"


@pytest.fixture(scope="module")
def workdir():
    path = protolab.tempdir("tm-ldap-")
    yield path
    protolab.rmtree(path)


@pytest.fixture(scope="module")
def pki(workdir):
    return protolab.PKI(workdir / "pki")


@pytest.fixture(scope="module")
def slapd(pki, workdir):
    if not protolab.shutil.which("slapd") and not protolab.os.path.exists("/usr/sbin/slapd"):
        pytest.skip("slapd is not installed")
    with protolab.Slapd(pki, workdir / "slapd", plain=True) as server:
        conn = server.connection()
        assert conn.bind()
        conn.add(f"ou=groups,{S}", ["organizationalUnit"], {"ou": "groups"})
        # sre (carol) is a member of ops; alice is in ops directly; bob also in tm-admins.
        conn.add(SRE, ["groupOfNames"], {"cn": "sre", "member": [f"uid=carol,ou=people,{S}"]})
        conn.add(OPS, ["groupOfNames"], {"cn": "ops", "member": [f"uid=alice,ou=people,{S}", SRE,
                                                               f"uid=bob,ou=people,{S}"]})
        conn.add(ADMINS, ["groupOfNames"], {"cn": "tm-admins", "member": [f"uid=bob,ou=people,{S}"]})
        conn.unbind()
        yield server


@pytest.fixture(autouse=True)
def ca_dirs(workdir, monkeypatch):
    monkeypatch.setenv("TASKMANAGER_CA_DIRS", str(workdir))


def configure(api: Api, slapd, **over):
    status, body = api.post("/api/v1/credentials", {"name": "ldap-bind", "kind": "password",
                                                    "username": slapd.ROOT_DN, "secret": slapd.ROOT_PW})
    assert status in (201, 409), body
    api.post("/api/v1/policies", {"name": "ops-runs", "permissions": ["view", "execute"]})
    settings = {"url": slapd.url, "ca_bundle": str(slapd.ca_file), "bind_dn": slapd.ROOT_DN,
                "bind_credential": "ldap-bind", "user_base": f"ou=people,{S}", "group_base": f"ou=groups,{S}",
                "group_roles": {OPS: "operator", ADMINS: "admin"}, "group_policies": {SRE: ["ops-runs"]},
                **over}
    status, body = api.call("PUT", "/api/v1/settings/ldap", settings)
    assert status == 200, body
    return body


def sign_in(client, user, password=None):
    resp = client.post("/api/v1/auth/token", json={"username": user, "password": password or f"{user}-Pass-1"})
    # (an empty password is tried directly by the tests that need it)
    return resp.status_code, resp.get_json()


def test_ldap_sign_in_groups_roles_and_policies(app, session, api, slapd):
    from server.core.models import Policy, User

    body = configure(api, slapd)
    assert body["bind_credential"] == "ldap-bind" and "admin-Secret" not in str(body)
    client = app.test_client()
    status, tok = sign_in(client, "carol")  # nested: sre ⊂ ops
    assert status == 201, tok
    carol = session.execute(select(User).where(User.username == "carol")).scalar_one()
    assert (carol.role, carol.auth_source, carol.external_id) == ("operator", "ldap", f"uid=carol,ou=people,{S}")
    assert [u.username for u in session.execute(select(Policy).where(Policy.name == "ops-runs")).scalar_one().users] \
        == ["carol"]
    assert sign_in(client, "bob")[0] == 201
    assert session.execute(select(User.role).where(User.username == "bob")).scalar_one() == "admin"  # highest wins
    assert sign_in(client, "alice", "wrong-pass")[0] == 401
    assert sign_in(client, "nobody")[0] == 401
    me = Api(client, tok["token"]).get("/api/v1/me")[1]
    assert me["source"] == "ldap"
    # An external account has no local password.
    status, err = api.patch(f"/api/v1/users/{carol.id}", {"password": "local-Pass-1"})
    assert status == 422 and "directory" in err["error"]["message"]

    # Carol leaves sre (her only way into a mapped group), alice joins it: at the next sign-in
    # carol is refused and deactivated, alice joins the policy and carol leaves it.
    conn = slapd.connection()
    assert conn.bind()
    assert conn.modify(SRE, {"member": [(ldap3.MODIFY_ADD, [f"uid=alice,ou=people,{S}"])]}), conn.result
    assert conn.modify(SRE, {"member": [(ldap3.MODIFY_DELETE, [f"uid=carol,ou=people,{S}"])]}), conn.result
    conn.unbind()
    status, err = sign_in(client, "carol")
    assert status == 401 and "mapped" in err["error"]["message"]
    session.expire_all()
    assert not session.get(User, carol.id).is_active
    assert Api(client, tok["token"]).get("/api/v1/me")[0] == 401  # deactivated: tokens stop
    assert sign_in(client, "alice")[0] == 201
    session.expire_all()
    assert [u.username for u in session.execute(select(Policy).where(Policy.name == "ops-runs")).scalar_one().users] \
        == ["alice"]
    actions = [r["action"] for r in api.get("/api/v1/audit?per_page=300")[1]["items"]]
    assert "identity.mapping" in actions and "settings.ldap" in actions


def test_test_endpoint_disabled_account_and_token_recheck(app, session, api, slapd):
    from server.core.models import User, utcnow
    from datetime import timedelta

    configure(api, slapd)
    status, res = api.post("/api/v1/settings/ldap/test", {"username": "bob"})
    assert status == 200 and res["ok"] and res["dn"] == f"uid=bob,ou=people,{S}"
    assert set(res["groups"]) == {OPS, ADMINS} and res["role"] == "admin"
    status, res = api.post("/api/v1/settings/ldap/test", {"username": "ghost"})
    assert status == 200 and not res["ok"] and "no entry" in res["message"]

    client = app.test_client()
    status, tok = sign_in(client, "bob")
    assert status == 201
    bob_api = Api(client, tok["token"])
    assert bob_api.get("/api/v1/me")[0] == 200
    slapd.lock("bob")  # disabled in the directory (ppolicy lock)
    assert sign_in(client, "bob")[0] == 401
    assert bob_api.get("/api/v1/me")[0] == 200  # within recheck_s: not asked again yet
    bob = session.execute(select(User).where(User.username == "bob")).scalar_one()
    bob.directory_checked_at = utcnow() - timedelta(seconds=901)
    session.commit()
    status, err = bob_api.get("/api/v1/me")
    assert status == 401
    session.expire_all()
    assert not session.get(User, bob.id).is_active


def test_start_tls_certificate_checks_and_directory_down(app, session, api, slapd, pki, workdir):
    configure(api, slapd, url=f"ldap://{slapd.addr}:389", start_tls=True)
    client = app.test_client()
    assert sign_in(client, "alice")[0] == 201
    status, err = api.call("PUT", "/api/v1/settings/ldap", {**api.get("/api/v1/settings/ldap")[1],
                                                           "start_tls": False})
    assert status == 422 and err["error"]["field"] == "start_tls"
    # A CA that did not sign the server's certificate: refused, with a clear message.
    other = protolab.PKI(workdir / "other", name="Unrelated CA")
    configure(api, slapd, ca_bundle=str(other.ca_file))
    status, err = sign_in(client, "alice")
    assert status == 401 and err["error"]["code"] == "directory_unavailable"
    # Nothing listens there: a clear message, and the local admin still signs in.
    configure(api, slapd, url=f"ldaps://{protolab.free_address(636)}:636")
    status, err = sign_in(client, "alice")
    assert status == 401 and "cannot be reached" in err["error"]["message"]
    assert sign_in(client, "admin", ADMIN_PASSWORD)[0] == 201
    status, res = api.post("/api/v1/settings/ldap/test", {"username": "alice"})
    assert status == 200 and not res["ok"] and "cannot be reached" in res["message"]


def test_direct_user_bind_without_a_service_account(app, session, api, slapd):
    configure(api, slapd, bind_dn="", bind_credential="", user_dn_template=f"uid={{username}},ou=people,{S}")
    client = app.test_client()
    assert sign_in(client, "alice")[0] == 201
    assert sign_in(client, "alice", "wrong-Pass-1")[0] == 401
    resp = client.post("/api/v1/auth/token", json={"username": "alice", "password": ""})
    assert resp.status_code == 401  # an empty password is never an anonymous bind
    status, err = api.post("/api/v1/settings/ldap/test", {"username": "alice"})
    assert status == 422 and err["error"]["field"] == "bind_dn"


def test_settings_validation(api, slapd):
    for bad, field in (({"url": "http://x"}, "url"), ({"url": "ldaps://x", "user_base": ""}, "user_base"),
                       ({"url": "ldaps://x", "user_base": "o=x", "bind_dn": "cn=a", "bind_credential": "none"},
                        "bind_credential"), ({"group_roles": {"g": "king"}}, "group_roles"),
                       ({"ca_bundle": "/etc/passwd"}, "ca_bundle"), ({"colour": 1}, "colour")):
        status, err = api.call("PUT", "/api/v1/settings/ldap", bad)
        assert status == 422 and err["error"]["field"] == field, (bad, err)


def test_settings_page_and_test_button(app, session, api, admin_user, slapd):
    from resource_factories import csrf_token
    from test_route_matrix import IsolatedClient

    app.test_client_class = IsolatedClient  # two browsers: nothing cached in g between them
    assert api.post("/api/v1/credentials", {"name": "ldap-bind", "kind": "password", "username": slapd.ROOT_DN,
                                            "secret": slapd.ROOT_PW})[0] == 201
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    client.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD, "csrf_token": csrf_token(page)})
    page = client.get("/admin/sign-in").get_data(as_text=True)
    form = {"csrf_token": csrf_token(page), "url": slapd.url, "ca_bundle": str(slapd.ca_file), "tls_verify": "on",
            "bind_dn": slapd.ROOT_DN, "bind_credential": "ldap-bind", "user_base": f"ou=people,{S}",
            "user_filter": "(uid={username})", "group_base": f"ou=groups,{S}",
            "group_filter": "(member={dn})", "group_roles": f"{OPS} = operator\n{ADMINS} = admin",
            "group_policies": "", "recheck_s": "600"}
    resp = client.post("/admin/sign-in/ldap", data={**form, "group_roles": "no equals sign"})
    assert resp.status_code == 422 and "group_roles" in resp.get_data(as_text=True)
    assert client.post("/admin/sign-in/ldap", data=form).status_code == 302
    assert api.get("/api/v1/settings/ldap")[1]["group_roles"] == {OPS: "operator", ADMINS: "admin"}
    resp = client.post("/admin/sign-in/ldap/test", data={"username": "alice", "csrf_token": form["csrf_token"]})
    text = resp.get_data(as_text=True)
    assert resp.status_code == 200 and f"uid=alice,ou=people,{S}" in text and OPS in text and "operator" in text
    # The LDAP user signs in on the web page; he has no local password to change.
    other = app.test_client()
    page = other.get("/login").get_data(as_text=True)
    assert other.post("/login", data={"username": "alice", "password": "alice-Pass-1",
                                      "csrf_token": csrf_token(page)}).status_code == 302
    account = other.get("/account").get_data(as_text=True)
    resp = other.post("/account/password", data={"current_password": "alice-Pass-1", "new_password": "x-Pass-12345",
                                                 "confirm": "x-Pass-12345", "csrf_token": csrf_token(account)})
    assert resp.status_code == 422 and "directory" in resp.get_data(as_text=True)
