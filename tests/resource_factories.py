"""Helpers for the API/web tests of hosts, credentials, tasks and executions (helper B).

Real keys from ``cryptography``, a real playbook directory on disk, resources created
through the public API so every test exercises the same path a client would.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa


def ed25519_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption()).decode()


def encrypted_pem_key(passphrase: bytes) -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(passphrase)).decode()


def encrypted_openssh_key(tmp_path: Path, passphrase: str) -> str:
    """An OpenSSH-format key with a passphrase, made by ssh-keygen (needs bcrypt otherwise)."""
    path = tmp_path / "enc_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(path)], check=True)
    return path.read_text()


def rsa_pem_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode()


def public_key_line() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def make_playbook_dir(app, tmp_path: Path) -> Path:
    """A playbook directory with a few playbooks, pointed to by the app's settings."""
    base = tmp_path / "playbooks"
    (base / "web").mkdir(parents=True)
    (base / "site.yml").write_text("- hosts: all\n  gather_facts: false\n  tasks:\n    - ansible.builtin.ping:\n")
    (base / "web" / "restart.yaml").write_text("- hosts: all\n  tasks: []\n")
    (base / "README.txt").write_text("not a playbook\n")
    (tmp_path / "outside.yml").write_text("- hosts: all\n  tasks: []\n")
    app.config["TM"].playbook_dir = base
    return base


def host(api, name: str, **fields: Any) -> dict:
    status, body = api.post("/api/v1/hosts", {"name": name, "address": fields.pop("address", "127.0.0.1"), **fields})
    assert status == 201, body
    return body


def credential(api, name: str, **fields: Any) -> dict:
    payload = {"name": name, "kind": "password", "username": "deploy", "secret": "s3cret-pw", **fields}
    status, body = api.post("/api/v1/credentials", payload)
    assert status == 201, body
    return body


def task(api, name: str, **fields: Any) -> dict:
    payload = {"name": name, "kind": "commands", "commands": ["uptime"], **fields}
    status, body = api.post("/api/v1/tasks", payload)
    assert status == 201, body
    return body


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)
