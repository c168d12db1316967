"""Tasks: what to run (command lines or a playbook), where (hosts, groups) and as whom.

The write path shared by the API and the web forms. Names in the input (hosts, groups,
credential) are resolved here; unknown ones are reported by name, and ones the user may
not use himself are refused (``check_rights``): ``edit`` on a task never widens where, or
as whom, its next run executes beyond the editor's own rights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.people import access
from server.core import audit
from server.catalog import launch, playbooks, projects
from server.core.errors import Conflict, Forbidden, ValidationError
from server.core.models import EXECUTION_FINAL, TASK_KINDS, Credential, Execution, Group, Host, Task, User
from server.core.validation import (
    Fields,
    Invalid,
    boolean,
    choice,
    integer,
    name_list,
    schema_of,
    text,
    type_name,
    variables,
)

TASK_FIELDS = ("name", "description", "kind", "commands", "playbook", "hosts", "groups", "credential", "vars",
               "timeout_s", "become", "allow_simultaneous", "retry_attempts", "retry_delay_s", "retry_on_lost",
               "variables", "allowed_tags", "serial", "max_fail_percentage", "project", "vault_credential")
MAX_COMMANDS = 1000
MAX_COMMAND_LEN = 16 * 1024
_command_text = text(MAX_COMMAND_LEN, multiline=True)


def command_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise Invalid(f"must be a list of command lines, not {type_name(value)}")
    if len(value) > MAX_COMMANDS:
        raise Invalid(f"must have at most {MAX_COMMANDS} commands")
    out = []
    for i, cmd in enumerate(value):
        try:
            out.append(_command_text(cmd))
        except Invalid as exc:
            raise Invalid(f"command {i + 1} {exc}") from None
    return out


command_list.schema = {"type": "array", "maxItems": MAX_COMMANDS, "items": schema_of(_command_text)}  # type: ignore[attr-defined]
# The checks of a task's plain fields: check_task applies them, the OpenAPI TaskInput is made of them.
TASK_CHECKS = {
    "name": text(200),
    "description": text(10_000, allow_empty=True, multiline=True),
    "kind": choice(TASK_KINDS),
    "commands": command_list,
    "playbook": text(500, nullable=True, allow_empty=True),
    "hosts": name_list(),
    "groups": name_list(item=text(120)),
    "credential": text(120, nullable=True, allow_empty=True),
    "timeout_s": integer(1, 86_400),
    "retry_attempts": integer(1, 10),
    "retry_delay_s": integer(0, 3600),
    "max_fail_percentage": integer(0, 100, nullable=True),
    "project": text(120, nullable=True, allow_empty=True),
    "vault_credential": text(120, nullable=True, allow_empty=True),
}


def _by_name(session: Session, model, names: list[str]) -> tuple[list[Any], list[str]]:
    """(objects in the given order, names that do not exist)."""
    if not names:
        return [], []
    found = {o.name: o for o in session.execute(select(model).where(model.name.in_(names))).scalars()}
    return [found[n] for n in names if n in found], [n for n in names if n not in found]


def check_task(session: Session, data: Any, task: Task | None = None, *, playbook_dir: Path) -> dict[str, Any]:
    """Validated values for a new task or the changed fields of ``task``; names resolved to rows."""
    f = Fields(data, TASK_FIELDS, partial=task is not None)
    f.take("name", TASK_CHECKS["name"], required=True)
    f.take("description", TASK_CHECKS["description"], default="")
    f.take("kind", TASK_CHECKS["kind"], required=True)
    f.take("commands", command_list, default=list)
    f.take("playbook", TASK_CHECKS["playbook"], default=None)
    f.take("hosts", TASK_CHECKS["hosts"], default=list)
    f.take("groups", TASK_CHECKS["groups"], default=list)
    f.take("credential", TASK_CHECKS["credential"], default=None)
    f.take("vars", variables, default=dict)
    f.take("timeout_s", TASK_CHECKS["timeout_s"], default=3600)
    f.take("become", boolean, default=False)
    f.take("allow_simultaneous", boolean, default=False)
    f.take("retry_attempts", TASK_CHECKS["retry_attempts"], default=1)
    f.take("retry_delay_s", TASK_CHECKS["retry_delay_s"], default=10)
    f.take("retry_on_lost", boolean, default=False)
    f.take("variables", launch.declarations, default=list)
    f.take("allowed_tags", launch.tag_list, default=list)
    f.take("serial", launch.serial, default=None)
    f.take("max_fail_percentage", TASK_CHECKS["max_fail_percentage"], default=None)
    f.take("project", TASK_CHECKS["project"], default=None)
    f.take("vault_credential", TASK_CHECKS["vault_credential"], default=None)
    f.raise_if_invalid()
    clean = f.clean

    # What to run: exactly one of commands / playbook, according to the (new) kind.
    kind = clean.get("kind") or task.kind
    kind_changed = task is None or kind != task.kind
    if kind == "commands":
        if clean.get("playbook"):
            f.error("playbook", "'playbook' applies only to tasks of kind playbook")
        if clean.get("project"):
            f.error("project", "'project' applies only to tasks of kind playbook")
        if clean.get("vault_credential"):
            f.error("vault_credential", "'vault_credential' applies only to tasks of kind playbook")
        commands = clean.get("commands", task.commands if task and not kind_changed else [])
        if "commands" in clean or kind_changed:
            if not commands:
                f.error("commands", "'commands' must list at least one command line")
            clean["commands"] = commands
            clean["playbook"] = None
            clean["project"] = None
    else:
        if clean.get("commands"):
            f.error("commands", "'commands' applies only to tasks of kind commands")
        if "playbook" in clean or kind_changed:
            clean["commands"] = []
        if "playbook" in clean or "project" in clean or kind_changed:
            project = projects.task_project(session, clean, task)
            playbook = clean.get("playbook", task.playbook if task else None)
            clean["project"] = project
            if project is None:
                f.error("project", f"unknown project: {clean['project_name']}")
            elif not playbook:
                f.error("playbook", "'playbook' is required for tasks of kind playbook")
            else:
                try:
                    if project.is_local:
                        source = playbooks.resolve(playbook_dir, playbook).read_text(errors="replace")
                    else:
                        source = projects.playbook_text(project, projects.check_playbook_in(project, playbook))
                    declared = set(clean.get("vars", task.vars if task else {}) or {})
                    declared |= {v["name"] for v in clean.get("variables", task.variables if task else []) or []}
                    problem = playbooks.prompt_problem(source, declared)
                    if problem:
                        f.error("playbook", problem)
                except ValidationError as err:
                    f.error(err.field or "playbook", err.message)
        clean.pop("project_name", None)
    _check_placeholders(f, clean, task)

    # Names -> rows; report every unknown one.
    if "hosts" in clean:
        clean["hosts"], missing = _by_name(session, Host, clean["hosts"])
        if missing:
            f.error("hosts", f"unknown host{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    if "groups" in clean:
        clean["groups"], missing = _by_name(session, Group, clean["groups"])
        if missing:
            f.error("groups", f"unknown group{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    if "credential" in clean and clean["credential"] is not None:
        found, missing = _by_name(session, Credential, [clean["credential"]])
        if missing:
            f.error("credential", f"unknown credential: {missing[0]}")
        elif found[0].kind == "vault_password":  # a login would send the vault password to the hosts
            f.error("credential", f"credential {found[0].name!r} is a vault_password: name it as 'vault_credential'")
        clean["credential"] = found[0] if found else None
    if "vault_credential" in clean and clean["vault_credential"] is not None:
        found, missing = _by_name(session, Credential, [clean["vault_credential"]])
        if missing:
            f.error("vault_credential", f"unknown credential: {missing[0]}")
        elif found[0].kind != "vault_password":
            f.error("vault_credential", f"credential {found[0].name!r} is a {found[0].kind}, not a vault_password")
        clean["vault_credential"] = found[0] if found else None
    f.raise_if_invalid()

    name = clean.get("name")
    if name is not None and (task is None or name != task.name):
        if session.execute(select(Task.id).where(Task.name == name)).first():
            raise Conflict(f"a task named {name!r} already exists", field="name")
    return clean


def _check_placeholders(f: Fields, clean: dict[str, Any], task: Task | None) -> None:
    """Every ``[#NAME#]`` of the command lines must be a declared variable."""
    commands = clean.get("commands", task.commands if task else [])
    decls = clean.get("variables", task.variables if task else [])
    missing = launch.undeclared_placeholders(commands or [], decls or [])
    if missing:
        field = "commands" if "commands" in clean else "variables"
        f.error(field, f"'{field}': [#{missing[0]}#] is used in a command line but '{missing[0]}' is not a "
                       "declared variable (add it to 'variables')")


def _names(items: list[Any]) -> str:
    return ", ".join(repr(i.name) for i in items)


def _unusable(session: Session, user: User, clean: dict[str, Any], task: Task | None) -> None:
    """Refuse targets and credentials the user may not use himself (403 naming them).

    Only what the request adds is checked: what the task already pointed at was granted
    by whoever gave the user ``edit``. Hosts and credentials the user may not even see are
    reported as unknown, like names that do not exist (no existence oracle)."""
    usable = access.usable_targets(session, user)
    before_hosts = {h.id for h in task.hosts} if task else set()
    before_groups = {g.id for g in task.groups} if task else set()
    hosts = [h for h in clean.get("hosts", []) if h.id not in before_hosts and not usable.host(h.id)]
    if hosts:
        visible = access.visible_host_ids(session, user)
        hidden = [h for h in hosts if visible is not None and h.id not in visible]
        if hidden:
            raise ValidationError(f"unknown host{'s' if len(hidden) > 1 else ''}: "
                                  f"{', '.join(h.name for h in hidden)}", field="hosts")
        raise Forbidden(f"you may not use host{'s' if len(hosts) > 1 else ''} {_names(hosts)}: "
                        "only the hosts of tasks you may execute", field="hosts")
    groups = [g for g in clean.get("groups", []) if g.id not in before_groups and not usable.group(g.id)]
    if groups:
        raise Forbidden(f"you may not use group{'s' if len(groups) > 1 else ''} {_names(groups)}: "
                        "only the groups of tasks you may execute", field="groups")
    for field, usable_here, current in (("credential", usable.credential, task and task.credential_id),
                                        ("vault_credential", usable.vault, task and task.vault_credential_id)):
        cred = clean.get(field)
        if cred is None or cred.id == current or usable_here(cred.id):
            continue
        visible = access.visible_credential_ids(session, user)
        if visible is not None and cred.id not in visible:
            raise ValidationError(f"unknown credential: {cred.name}", field=field)
        what = "credentials" if field == "credential" else "vault credentials"
        raise Forbidden(f"you may not use credential {cred.name!r}: only the {what} of tasks you may execute",
                        field=field)


def _local_targets(clean: dict[str, Any], task: Task | None) -> tuple[str, list[Host]]:
    """(field, hosts with the ``local`` protocol) among the targets the task will have."""
    hosts = clean.get("hosts", task.hosts if task else [])
    local = [h for h in hosts if h.protocol == access.LOCAL_PROTOCOL]
    if local:
        return "hosts", local
    groups = clean.get("groups", task.groups if task else [])
    return "groups", sorted({h.id: h for g in groups for h in g.member_hosts() if h.protocol == access.LOCAL_PROTOCOL}.values(),
                            key=lambda h: h.name)


def check_rights(session: Session, user: User | None, clean: dict[str, Any], task: Task | None = None) -> None:
    """A user points a task only at what he may use himself, and only an admin at the Task
    Manager server itself: a non-admin may not create or change a task whose targets
    (direct, or through its groups) include a ``local`` host - changing its commands would
    run them on the controller. ``user`` None is the system (no check)."""
    if user is None:
        return
    _unusable(session, user, clean, task)
    if not access.may_target_local(user):
        field, local = _local_targets(clean, task)
        if local:
            raise Forbidden(f"host{'s' if len(local) > 1 else ''} {_names(local)} use{'' if len(local) > 1 else 's'} "
                            "the local protocol (runs on the Task Manager server): only admins may create or edit "
                            "a task that targets it" + (" through a group" if field == "groups" else ""), field=field)


def _apply(task: Task, clean: dict[str, Any]) -> list[str]:
    changed = []
    for key, value in clean.items():
        old = getattr(task, key)
        if key in ("hosts", "groups"):
            same = {o.id for o in old} == {o.id for o in value}
        elif key in ("credential", "project", "vault_credential"):
            same = (old.id if old else None) == (value.id if value else None)
        else:
            same = old == value
        if not same:
            changed.append(key)
            setattr(task, key, value)
    return changed


def create_task(session: Session, data: Any, *, user: User | None, playbook_dir: Path) -> Task:
    clean = check_task(session, data, playbook_dir=playbook_dir)
    check_rights(session, user, clean)
    task = Task(name=clean["name"], kind=clean["kind"], created_by_id=user.id if user else None)
    _apply(task, clean)
    session.add(task)
    session.flush()
    session.refresh(task, ["hosts", "groups"])  # relationship order by name
    audit.record(session, "task.create", actor=user.username if user else None, target=task, name=task.name,
                 kind=task.kind, hosts=[h.name for h in task.hosts], groups=[g.name for g in task.groups],
                 credential=task.credential.name if task.credential else None,
                 **({"vault_credential": task.vault_credential.name} if task.vault_credential else {}))
    return task


def update_task(session: Session, task: Task, data: Any, *, user: User | None, playbook_dir: Path) -> Task:
    clean = check_task(session, data, task, playbook_dir=playbook_dir)
    check_rights(session, user, clean, task)
    changed = _apply(task, clean)
    session.flush()
    session.refresh(task, ["hosts", "groups"])  # relationship order by name
    if changed:
        audit.record(session, "task.update", actor=user.username if user else None, target=task, name=task.name,
                     changed=sorted(changed))
    return task


def delete_task(session: Session, task: Task, *, user: User | None) -> None:
    """Delete a task with its schedules and history; refused while a run is in flight."""
    active = session.execute(
        select(Execution.id, Execution.status)
        .where(Execution.task_id == task.id, Execution.status.not_in(EXECUTION_FINAL))
        .order_by(Execution.id).limit(1)
    ).first()
    if active:
        raise Conflict(f"task {task.name!r} has execution #{active.id} {active.status}; cancel it first",
                       field="task")
    history = session.execute(select(func.count(Execution.id)).where(Execution.task_id == task.id)).scalar_one()
    audit.record(session, "task.delete", actor=user.username if user else None, target=task, name=task.name,
                 executions_deleted=history)
    session.delete(task)
    session.flush()
