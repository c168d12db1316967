"""``make demo``: Task Manager with a local lab of 20 real SSH servers and the model task.

Starts 20 ``sshd`` on loopback addresses (tests/sshlab.py), loads an SSH-key credential,
the 20 hosts (group ``shop``), the task "restart shop services" (one command per service)
scheduled daily at 06:00, runs it once right away, and serves the app until Ctrl-C.
Running it again updates the same records (the lab's addresses may change).
"""
from __future__ import annotations

import sys
from pathlib import Path

from sqlalchemy import select

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from sshlab import SSHLab  # noqa: E402

from server import create_app
from server.core import db  # noqa: E402
from server.people.auth import ensure_first_admin, first_admin_banner  # noqa: E402
from server.catalog.credentials import create_credential, update_credential  # noqa: E402
from server.executions.request import request_execution  # noqa: E402
from server.catalog.hosts import create_host, update_host  # noqa: E402
from server.launcher import serve  # noqa: E402
from server.core.redis_conn import ensure_embedded_redis  # noqa: E402
from server.core.models import Credential, Host, Schedule, Task, User  # noqa: E402
from server.scheduling.schedules import create_schedule  # noqa: E402
from server.catalog.tasks import create_task  # noqa: E402

SERVICES = ("nginx", "php-fpm", "redis")
TASK = "restart shop services"


def seed(lab: SSHLab, playbook_dir: Path) -> int:
    """Create or refresh the demo records; return the id of the execution started now."""
    s = db.session()
    admin = s.execute(select(User).where(User.role == "admin").order_by(User.id)).scalars().first()
    cred_data = {"name": "lab-key", "kind": "ssh_key", "username": lab.user, "secret": lab.private_key}
    cred = s.execute(select(Credential).where(Credential.name == "lab-key")).scalar_one_or_none()
    if cred is None:
        create_credential(s, cred_data, actor="demo")
    else:
        update_credential(s, cred, {"secret": lab.private_key, "username": lab.user}, actor="demo")
    for i, server in enumerate(lab.servers, start=1):
        name = f"shop-{i:02d}"
        data = {"name": name, "address": server.address, "port": server.port, "groups": ["shop"]}
        host = s.execute(select(Host).where(Host.name == name)).scalar_one_or_none()
        if host is None:
            create_host(s, data, actor="demo")
        else:
            update_host(s, host, {"address": server.address, "port": server.port}, actor="demo")
    task = s.execute(select(Task).where(Task.name == TASK)).scalar_one_or_none()
    if task is None:
        commands = [
            f"echo \"restarting {svc} on $(echo $SSH_CONNECTION | cut -d' ' -f3)\"; sleep 0.2; echo '{svc}: active (running)'"
            for svc in SERVICES
        ]
        task = create_task(
            s,
            {"name": TASK, "kind": "commands", "commands": commands, "groups": ["shop"], "credential": "lab-key",
             "description": "Every day at 06:00: restart the web, PHP and cache services on the 20 shop servers."},
            user=admin,
            playbook_dir=playbook_dir,
        )
        s.flush()
    if not s.execute(select(Schedule.id).where(Schedule.task_id == task.id)).first():
        create_schedule(s, task, admin, {"cron": "0 6 * * *", "timezone": "UTC"})
    ex = request_execution(s, task, admin, reason="make demo: first run")
    s.commit()
    return ex.id


def main() -> None:
    app = create_app()
    settings = app.config["TM"]
    # The private Redis must answer before the first run is enqueued.
    redis_proc = None if settings.redis_url else ensure_embedded_redis(
        settings.instance_dir, settings.embedded_redis_socket)
    try:
        with SSHLab(20) as lab, app.app_context():
            password = ensure_first_admin(db.session())
            if password:
                print(first_admin_banner(password), flush=True)
            execution_id = seed(lab, settings.playbook_dir)
            print(f"demo: 20 SSH servers on {lab.servers[0].address}..{lab.servers[-1].address}; "
                  f"first run: http://{settings.bind}/executions/{execution_id}", flush=True)
            serve(settings)
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)


if __name__ == "__main__":
    main()
