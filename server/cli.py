"""Flask CLI: ``flask --app wsgi <group> <command>`` (see ../shared/CONTRACT.md)."""
from __future__ import annotations

import sys

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from sqlalchemy import select

from server.core import audit, db
from server.core.errors import ApiError
from server.core.models import User

users_cli = AppGroup("users", help="Manage users and API tokens.")
db_cli = AppGroup("db", help="Database migrations.")
audit_cli = AppGroup("audit", help="The tamper-evident audit trail.")
hosts_cli = AppGroup("hosts", help="Hosts and inventories.")
projects_cli = AppGroup("projects", help="Playbook projects (git).")


def init_app(app: Flask) -> None:
    for group in (users_cli, db_cli, audit_cli, hosts_cli, projects_cli):
        app.cli.add_command(group)
    app.cli.add_command(worker_cmd)
    app.cli.add_command(scheduler_cmd)
    app.cli.add_command(serve_cmd)
    app.cli.add_command(notifier_cmd)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@projects_cli.command("sync")
@click.argument("name")
def projects_sync(name: str) -> None:
    """Sync project NAME now, in this process; exit 1 when the sync fails (the reason on stderr)."""
    from server.catalog import projects

    project = projects.by_name(db.session(), name)
    if project is None:
        _fail(f"no project named {name!r}")
    if project.is_local:
        _fail(f"project {name!r} is the playbook directory; there is nothing to sync")
    projects.mark_syncing(db.session(), project, actor="cli", reason="cli")
    db.session.commit()
    projects.sync(db.session(), project, instance_dir=current_app.config["TM"].instance_dir, actor="cli")
    if project.sync_status != "ok":
        click.echo(f"error: sync of {name} failed: {project.sync_error}", err=True)
        sys.exit(1)
    click.echo(f"{name}: {project.revision} ({len(project.playbooks or [])} playbooks)")


@users_cli.command("create")
@click.argument("name")
@click.option("--role", required=True, help="admin, author, operator, approver or auditor")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
def users_create(name: str, role: str, password_stdin: bool) -> None:
    from server.people.auth import create_user

    password = sys.stdin.readline().rstrip("\n") if password_stdin else click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        user = create_user(db.session(), name, role, password, actor="cli")
        db.session.commit()
    except ApiError as err:
        db.session.rollback()
        _fail(err.message)
    click.echo(f"created user {user.username} ({user.role})")


@users_cli.command("token")
@click.argument("name")
@click.option("--label", default="cli", help="a name for the token")
def users_token(name: str, label: str) -> None:
    from server.people.auth import issue_token

    user = db.session.execute(select(User).where(User.username == name)).scalar_one_or_none()
    if user is None:
        _fail(f"no user named {name!r}")
    token = issue_token(db.session(), user, name=label, actor="cli")
    db.session.commit()
    click.echo(token)


@users_cli.command("ensure-admin")
def users_ensure_admin() -> None:
    """Create the first admin if there is none; print its one-time password."""
    from server.people.auth import ensure_first_admin, first_admin_banner

    password = ensure_first_admin(db.session())
    click.echo(first_admin_banner(password) if password else "an admin already exists")


@db_cli.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    from server.core.migrate import upgrade

    upgrade(revision)
    click.echo(f"database at {revision}")


@audit_cli.command("verify")
def audit_verify() -> None:
    """Exit 1 naming the first bad row if any row was altered or removed (also the last ones,
    and any recorded gap: "rows after id N are missing")."""
    check = audit.verify_trail(db.session())
    if not check.ok:
        where = f"at row {check.bad_id}" if check.bad_id is not None else ""
        click.echo(f"audit trail BROKEN {where}: {check.why}", err=True)
        sys.exit(1)
    click.echo(f"audit trail intact: {check.why}")


@audit_cli.command("export")
@click.option("--output", "-o", type=click.File("w"), default="-")
def audit_export(output) -> None:
    """Export the audit trail as JSON lines."""
    import json

    for row in audit.iter_rows(db.session()):
        output.write(json.dumps(audit.as_dict(row)) + "\n")


@hosts_cli.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=True))
def hosts_import(path: str) -> None:
    """Import an Ansible inventory (any format ansible-inventory reads)."""
    from server.runs.inventory import import_inventory

    try:
        result = import_inventory(db.session(), path, actor="cli")
        db.session.commit()
    except ApiError as err:
        db.session.rollback()
        _fail(err.message)
    click.echo(f"imported {result['hosts']} hosts and {result['groups']} groups from {path}")
    for item in result["skipped"]:
        click.echo(f"skipped {item['scope']}: {item['name']}: {item['reason']}")
    for item in result["literal_jinja"]:
        click.echo(f"kept literal (never templated) {item['scope']}: {item['name']}")


@hosts_cli.command("forget-key")
@click.argument("name")
def hosts_forget_key(name: str) -> None:
    """Forget a host's recorded SSH host key (after the server was rebuilt)."""
    from sqlalchemy import select

    from server.runs.hostkeys import forget
    from server.core.models import Host

    host = db.session.execute(select(Host).where(Host.name == name)).scalar_one_or_none()
    if host is None:
        _fail(f"host {name!r} does not exist")
    try:
        result = forget(db.session(), None, host, current_app.config["TM"].instance_dir)
        db.session.commit()
    except ApiError as err:
        db.session.rollback()
        _fail(err.message)
    for key in result["forgotten"]:
        click.echo(f"forgot {key['name']} {key['type']} {key['fingerprint']}")
    if not result["forgotten"]:
        click.echo(f"no host key recorded for {name}")


@click.command("worker")
@click.option("--burst", is_flag=True, help="exit when the queue is empty")
@click.option("--name", default=None)
def worker_cmd(burst: bool, name: str | None) -> None:
    """Run one RQ worker for executions."""
    from server.runs.worker import run_worker

    run_worker(current_app.config["TM"], burst=burst, name=name)


@click.command("scheduler")
def scheduler_cmd() -> None:
    """Run the scheduler loop (state in the database; any number may run)."""
    from server.scheduling.scheduler import run_scheduler

    run_scheduler()


@click.command("serve")
def serve_cmd() -> None:
    """Web UI + API, one worker and the scheduler in the foreground (what `make run` starts)."""
    from server.launcher import serve

    serve(current_app.config["TM"])


@click.command("notifier")
@click.option("--interval", default=5.0, show_default=True, help="seconds between polls")
def notifier_cmd(interval: float) -> None:
    """Deliver pending notifications until stopped (the scheduler process already does this;
    run it separately only when no scheduler runs on this machine)."""
    import signal
    import threading

    from server.reporting.notify import run_loop

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run_loop(current_app._get_current_object(), stop, interval)
