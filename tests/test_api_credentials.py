"""Credentials API: write-only secrets, key validation, version bumps, delete protection."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from resource_factories import (
    credential,
    ed25519_key,
    encrypted_openssh_key,
    encrypted_pem_key,
    public_key_line,
    rsa_pem_key,
    task,
)
from server.core.models import AuditLog, Credential
from server.core.vault import vault



class Recorder:
    """Wraps the API client and asserts no response ever contains a known secret."""

    def __init__(self, api):
        self.api = api
        self.secrets: list[str] = []

    def remember(self, *values: str) -> None:
        self.secrets.extend(v.strip() for v in values)

    def _check(self, result):
        status, body = result
        raw = json.dumps(body) if not isinstance(body, bytes) else body.decode(errors="replace")
        for secret in self.secrets:
            # Also a long fragment (e.g. the base64 body of a key) must not leak.
            for fragment in {secret, secret[len(secret) // 3: len(secret) // 3 + 24]}:
                assert fragment not in raw, "a secret leaked into an API response"
        if isinstance(body, dict):
            assert "secret" not in body and "become_password" not in body
            assert "secret_enc" not in body and "become_password_enc" not in body
        return status, body

    def __getattr__(self, name):
        method = getattr(self.api, name)
        return lambda *a, **kw: self._check(method(*a, **kw))


@pytest.fixture
def rec(api):
    return Recorder(api)


def test_ssh_key_is_stored_encrypted_and_never_returned(rec, session):
    key = ed25519_key()
    rec.remember(key, "become-pw-1")
    status, body = rec.post("/api/v1/credentials", {"name": "deploy-key", "kind": "ssh_key", "username": "deploy",
                                                    "secret": key, "become_password": "become-pw-1",
                                                    "become_method": "sudo"})
    assert status == 201
    assert body["has_secret"] is True and body["has_become_password"] is True and body["version"] == 1
    assert body["username"] == "deploy" and body["kind"] == "ssh_key" and body["become_method"] == "sudo"
    row = session.get(Credential, body["id"])
    assert key.encode() not in bytes(row.secret_enc)  # encrypted at rest
    assert vault().decrypt(row.secret_enc) == key.strip() + "\n"
    assert vault().decrypt(row.become_password_enc) == "become-pw-1"

    rec.get(f"/api/v1/credentials/{body['id']}")
    status, listing = rec.get("/api/v1/credentials")
    assert listing["total"] == 1 and listing["items"][0]["has_secret"] is True
    # Neither the audit trail nor the OpenAPI document carry the secret.
    details = json.dumps([r.detail for r in session.execute(select(AuditLog)).scalars()])
    assert "become-pw-1" not in details and key[40:70] not in details


def test_pem_rsa_key_and_windows_newlines_accepted(rec, session):
    key = rsa_pem_key()
    rec.remember(key)
    status, body = rec.post("/api/v1/credentials", {"name": "rsa", "kind": "ssh_key", "secret": key.replace("\n", "\r\n")})
    assert status == 201
    assert vault().decrypt(session.get(Credential, body["id"]).secret_enc) == key.strip() + "\n"


@pytest.mark.parametrize("secret, words", [
    ("not a key at all", "not a valid private key"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n", "not a valid private key"),
    ("PUBLIC", "public key"),
    ("ENCRYPTED-PEM", "passphrase"),
    ("ENCRYPTED-OPENSSH", "passphrase"),
])
def test_ssh_key_must_be_a_usable_private_key(rec, session, tmp_path, secret, words):
    if secret == "PUBLIC":
        secret = public_key_line()
    elif secret == "ENCRYPTED-PEM":
        secret = encrypted_pem_key(b"hunter22")
    elif secret == "ENCRYPTED-OPENSSH":
        secret = encrypted_openssh_key(tmp_path, "hunter22")
    status, body = rec.post("/api/v1/credentials", {"name": "bad", "kind": "ssh_key", "secret": secret})
    assert status == 422, body
    assert body["error"]["field"] == "secret" and words in body["error"]["message"]
    assert session.execute(select(Credential)).first() is None


def test_patch_keeps_secret_bumps_version_only_for_login_changes(rec, session):
    rec.remember("first-pw", "second-pw", "become-1")
    status, cred = rec.post("/api/v1/credentials", {"name": "pw", "kind": "password", "username": "ops",
                                                    "secret": "first-pw", "become_password": "become-1"})
    cid = cred["id"]
    status, body = rec.patch(f"/api/v1/credentials/{cid}", {"name": "pw-renamed"})
    assert status == 200 and body["version"] == 1 and body["has_secret"] is True  # a rename is not a login change
    status, body = rec.patch(f"/api/v1/credentials/{cid}", {"secret": "first-pw"})
    assert body["version"] == 1  # same secret: nothing changed
    status, body = rec.patch(f"/api/v1/credentials/{cid}", {"secret": "second-pw"})
    assert status == 200 and body["version"] == 2
    status, body = rec.patch(f"/api/v1/credentials/{cid}", {"username": "root"})
    assert body["version"] == 3 and body["username"] == "root"
    status, body = rec.patch(f"/api/v1/credentials/{cid}", {"become_password": None})
    assert body["version"] == 4 and body["has_become_password"] is False and body["has_secret"] is True
    row = session.get(Credential, cid)
    session.refresh(row)
    assert vault().decrypt(row.secret_enc) == "second-pw" and row.become_password_enc is None
    # Round-tripping the GET body (with read-only fields) is accepted and changes nothing.
    status, current = rec.get(f"/api/v1/credentials/{cid}")
    status, body = rec.patch(f"/api/v1/credentials/{cid}", current)
    assert status == 200 and body["version"] == 4
    changed = [r.detail.get("changed") for r in session.execute(
        select(AuditLog).where(AuditLog.action == "credential.update").order_by(AuditLog.id)).scalars()]
    assert changed == [["name"], ["secret"], ["username"], ["become_password"]]


def test_kind_change_needs_a_matching_secret(rec):
    key = ed25519_key()
    rec.remember(key, "pw-x")
    status, cred = rec.post("/api/v1/credentials", {"name": "c", "kind": "password", "secret": "pw-x"})
    status, body = rec.patch(f"/api/v1/credentials/{cred['id']}", {"kind": "ssh_key"})
    assert status == 422 and body["error"]["field"] == "secret"
    status, body = rec.patch(f"/api/v1/credentials/{cred['id']}", {"kind": "ssh_key", "secret": "pw-x"})
    assert status == 422 and "private key" in body["error"]["message"]
    status, body = rec.patch(f"/api/v1/credentials/{cred['id']}", {"kind": "ssh_key", "secret": key})
    assert status == 200 and body["kind"] == "ssh_key" and body["version"] == 2


def test_other_kinds_and_single_line_passwords(rec):
    rec.remember("tok-123", "a\nb")
    assert rec.post("/api/v1/credentials", {"name": "t", "kind": "token", "secret": "tok-123"})[0] == 201
    status, body = rec.post("/api/v1/credentials", {"name": "p", "kind": "password", "secret": "a\nb"})
    assert status == 422 and body["error"]["field"] == "secret"
    status, body = rec.post("/api/v1/credentials", {"name": "k", "kind": "kerberos", "secret": "x"})
    assert status == 422 and body["error"]["field"] == "kind"
    status, body = rec.post("/api/v1/credentials", {"name": "n", "kind": "password"})
    assert status == 422 and body["error"]["field"] == "secret"


def test_delete_refused_while_a_task_uses_it(api, session):
    cred = credential(api, "shared-cred")
    task(api, "nightly-backup", credential="shared-cred")
    status, body = api.delete(f"/api/v1/credentials/{cred['id']}")
    assert status == 409 and "nightly-backup" in body["error"]["message"]
    assert session.get(Credential, cred["id"]) is not None
    t = api.get("/api/v1/tasks")[1]["items"][0]
    assert api.patch(f"/api/v1/tasks/{t['id']}", {"credential": None})[0] == 200
    assert api.delete(f"/api/v1/credentials/{cred['id']}")[0] == 204
    assert api.get(f"/api/v1/credentials/{cred['id']}")[0] == 404


def test_access_and_duplicates(api, api_as):
    credential(api, "one")
    status, body = api.post("/api/v1/credentials", {"name": "one", "kind": "password", "secret": "x"})
    assert status == 409 and body["error"]["field"] == "name"
    operator, auditor = api_as("op", "operator"), api_as("au", "auditor")
    assert operator.get("/api/v1/credentials")[0] == 403
    assert auditor.get("/api/v1/credentials")[0] == 200
    assert auditor.post("/api/v1/credentials", {"name": "two", "kind": "password", "secret": "x"})[0] == 403
