"""The contract's command line, run as a user would: ``flask --app wsgi users ...``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FLASK = [str(Path(sys.executable).parent / "flask"), "--app", "wsgi"]


def flask(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(FLASK + list(args), cwd=REPO, env={**os.environ, **env}, input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_first_admin_users_and_tokens_from_the_command_line(app, env):
    first = flask(env, "users", "ensure-admin")
    assert first.returncode == 0 and "One-time password: " in first.stdout
    password = first.stdout.split("One-time password: ")[1].split()[0]
    again = flask(env, "users", "ensure-admin")
    assert again.returncode == 0 and "already exists" in again.stdout

    made = flask(env, "users", "create", "olga", "--role", "operator", "--password-stdin", stdin="olga-password-1\n")
    assert made.returncode == 0, made.stderr
    bad = flask(env, "users", "create", "olga", "--role", "operator", "--password-stdin", stdin="olga-password-1\n")
    assert bad.returncode != 0 and "already exists" in bad.stderr
    role = flask(env, "users", "create", "x", "--role", "wizard", "--password-stdin", stdin="long-enough-1\n")
    assert role.returncode != 0 and "role" in role.stderr

    token = flask(env, "users", "token", "olga").stdout.strip().splitlines()[-1]
    client = app.test_client()
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.get_json()["username"] == "olga"
    # The one-time password (shown only to whoever runs the server) mints a token, as the README shows ...
    login = client.post("/api/v1/auth/token", json={"username": "admin", "password": password})
    assert login.status_code == 201 and login.get_json()["token"]
    # ... and so does the command line.
    admin_token = flask(env, "users", "token", "admin").stdout.strip().splitlines()[-1]
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {admin_token}"})
    assert me.status_code == 200 and me.get_json()["must_change_password"] is True
    assert flask(env, "audit", "verify").returncode == 0
