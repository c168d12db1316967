"""What an approval binds: the run's targets and content, and their fingerprint.

An execution stores ``fingerprint(...)`` when it is requested; an approval stores the one it
approved; a schedule stores the one its approval covered. They are compared with a fresh
fingerprint of the task as it is now when an approver decides, by the worker just before the
run (``approvals.verify_before_run``), when a schedule fires and when a lost run is retried.
``parts(...)`` names which component differs so that the refusal can say *what* changed.

Both come from one list of inputs (``_inputs``) and one table that gives each input its
part (``PARTS``), so a new input cannot enter the fingerprint without a part that reports it.

The fingerprint formula is kept exactly as released (a SHA-256 over the JSON of the inputs),
rather than recomputed as a hash of the parts: fingerprints are persisted (``Execution.
fingerprint``, ``Approval.fingerprint``, ``Schedule.approved_fingerprint``) and compared with
fresh ones across deploys. A new formula would refuse every run approved before the upgrade
and suspend every approved schedule. The parts stored in approval plans are kept as released
for the same reason (they are compared to say what changed).

Launch variables and options came later, as one more input (``launch``, part "launch
options": the task's variable declarations, tags, rolling-run settings and a digest of the
encrypted secret values). It enters the inputs only when it holds something, so a run or
schedule without them keeps exactly the released fingerprint.

The files of the ``local`` project came later the same way (input ``files``, part "project
files"): the sandbox shows the run the whole playbook directory, so ``filter_plugins/``,
``library/``, ``group_vars/``, other playbooks it imports... are content too. The released
"content" input keeps hashing the playbook and the roles directories; ``files`` hashes every
other file of the directory (``playbooks.tree_hash``) and enters the inputs only when there
is one. A local run approved before this input existed, in a directory with such files, asks
for approval again: its approval never covered them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy.orm import Session

from server.catalog import playbooks
from server.core.errors import ValidationError
from server.core.models import Host, Project, Task

# Part name -> the inputs it covers. A part with one input digests that input's value, one with
# several digests the list of their values in this order (as released). "task" (the task's id)
# is in no part: a run or a schedule never changes task, so it cannot be what changed.
PARTS: dict[str, tuple[str, ...]] = {
    "task definition": ("kind", "playbook", "become", "timeout_s"),
    "content": ("commands", "content"),  # shown as "playbook content" or "commands"
    "task variables": ("task_vars",),
    "run variables": ("run_vars",),
    "target hosts": ("hosts",),
    "credential": ("credential",),
    "launch options": ("launch",),
    "project files": ("files",),
}
IDENTITY = ("task",)


def target_hosts(task: Task, limit: list[str] | None = None) -> list[Host]:
    """The task's hosts: named hosts plus members of its groups and of their child groups,
    de-duplicated, by name."""
    hosts = {h.id: h for h in task.hosts}
    for group in task.groups:
        for h in group.member_hosts():
            hosts.setdefault(h.id, h)
    result = sorted(hosts.values(), key=lambda h: h.name)
    if limit is not None:
        wanted = set(limit)
        result = [h for h in result if h.name in wanted]
    return result


def git_project(task: Task) -> Project | None:
    """The task's git project (None for commands and ``local`` tasks)."""
    project = task.project if task.kind == "playbook" else None
    return project if project is not None and not project.is_local else None


def revision_of(task: Task, revision: str | None = None) -> tuple[str | None, str]:
    """(git commit or None, content hash) of what the task will run.

    For a git project the commit *is* the content: ``revision`` (a run's pinned commit) or
    the project's last good sync, hashed with the project, the playbook path and the vault
    credential, so the approval binds the whole project at that commit (its part is named
    "project commit"). A local task hashes its playbook and roles (the released formula).
    """
    if task.kind == "commands":
        return None, playbooks.commands_hash(task.commands or [])
    project = git_project(task)
    if project is not None:
        commit = revision or project.revision
        if not commit:
            raise ValidationError(f"project {project.name!r} has not been synced yet", field="project")
        bound = [project.id, project.url, commit, task.playbook, task.vault_credential_id]
        return commit, hashlib.sha256(json.dumps(bound).encode()).hexdigest()
    settings = current_app.config["TM"]
    path = playbooks.resolve(settings.playbook_dir, task.playbook or "")
    return playbooks.git_commit(settings.playbook_dir), playbooks.content_hash(path, _local_roles())


def _local_roles() -> list[Path]:
    settings = current_app.config["TM"]
    return [settings.playbook_dir / "roles", settings.playbook_dir.parent / "roles"]


def project_files(task: Task) -> str | None:
    """A ``local`` playbook task: the digest of the rest of what its run can read (every file of
    the playbook directory but the playbook and the roles, which ``revision_of`` hashes), or
    None when there is nothing else. None for commands and git projects (the commit covers all)."""
    if task.kind != "playbook" or git_project(task) is not None:
        return None
    settings = current_app.config["TM"]
    path = playbooks.resolve(settings.playbook_dir, task.playbook or "")
    return playbooks.tree_hash(settings.playbook_dir, [path, *_local_roles()])


def launch_inputs(row: Any) -> dict[str, Any]:
    """The launch options an approval binds for an execution or a schedule (``row``): empty
    when there are none, so the released formula applies. Secret values are bound by a digest
    of their ciphertext, which changes whenever they are given again."""
    task = row.task
    enc = getattr(row, "secret_vars_enc", None)
    found = {
        "variables": task.variables or None,
        "serial": task.serial,
        "max_fail_percentage": task.max_fail_percentage,
        "tags": getattr(row, "tags", None),
        "skip_tags": getattr(row, "skip_tags", None),
        "secrets": hashlib.sha256(bytes(enc)).hexdigest() if enc else None,
    }
    return {k: v for k, v in found.items() if v is not None}


def _inputs(task: Task, content_hash: str, run_vars: dict[str, Any], hosts: list[Host],
            launch: dict[str, Any] | None = None, files: str | None = None) -> dict[str, Any]:
    """Everything an approval binds: definition, content, variables, targets and credential."""
    cred = task.credential
    extra: dict[str, Any] = {"launch": launch} if launch else {}
    if files:
        extra["files"] = files
    return {
        **extra,
        "task": task.id,
        "kind": task.kind,
        "commands": task.commands,
        "playbook": task.playbook,
        "content": content_hash,
        "task_vars": task.vars,
        "run_vars": run_vars,
        "become": task.become,
        "timeout_s": task.timeout_s,
        "hosts": [[h.name, h.address, h.port, h.protocol, h.vars] for h in hosts],
        "credential": [cred.id, cred.version] if cred else None,
    }


def _sha(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint(task: Task, content_hash: str, run_vars: dict[str, Any], hosts: list[Host],
                launch: dict[str, Any] | None = None, files: str | None = None) -> str:
    """The digest of all the inputs (the released formula; see the module docstring)."""
    return _sha(_inputs(task, content_hash, run_vars, hosts, launch, files))


def parts(task: Task, content_hash: str, run_vars: dict[str, Any], hosts: list[Host],
          launch: dict[str, Any] | None = None, files: str | None = None) -> dict[str, str]:
    """A short digest per named component, to say which one changed."""
    doc = _inputs(task, content_hash, run_vars, hosts, launch, files)
    result = {}
    for name, keys in PARTS.items():
        if any(k not in doc for k in keys):
            continue  # no launch options or project files: the released parts only
        value = doc[keys[0]] if len(keys) == 1 else [doc[k] for k in keys]
        if name == "content":
            name = ("commands" if task.kind != "playbook" else
                    "project commit" if git_project(task) is not None else "playbook content")
        result[name] = _sha(value)[:16]
    return result


@dataclass
class Snapshot:
    """The task as it would run now: its fingerprint and a digest per component."""

    fingerprint: str | None
    parts: dict[str, str]
    error: str | None = None
    revision: str | None = None  # the commit a git project's run would use


def _reload(session: Session, task: Task) -> None:
    """Read the task and what it targets afresh (long-lived sessions may hold stale copies)."""
    session.refresh(task)
    if task.project is not None:
        session.refresh(task.project)
    if task.credential is not None:
        session.refresh(task.credential)
    for host in task.hosts:
        session.refresh(host)
    for top in task.groups:
        session.refresh(top)
        for group in top.subtree():
            session.refresh(group)
            for host in group.hosts:
                session.refresh(host)


def current_snapshot(session: Session, task: Task, run_vars: dict[str, Any] | None,
                     limit_hosts: list[str] | None, row: Any = None, revision: str | None = None) -> Snapshot:
    """Fingerprint and parts of ``task`` as stored now, or why it can no longer run.

    ``row``: the execution or schedule whose launch options the approval binds.
    ``revision``: the commit a run was requested at (git projects run that commit even when
    the branch moved on); without it, the project's last good sync (a schedule's next run).
    """
    _reload(session, task)
    run_vars = run_vars or {}
    try:
        commit, chash = revision_of(task, revision)
        files = project_files(task)
    except ValidationError as err:
        return Snapshot(None, {}, f"the playbook can no longer be used: {err.message}")
    except OSError as err:
        return Snapshot(None, {}, f"the playbook can no longer be read: {err}")
    hosts = target_hosts(task, limit_hosts)
    launch = launch_inputs(row) if row is not None else None
    return Snapshot(fingerprint(task, chash, run_vars, hosts, launch, files),
                    parts(task, chash, run_vars, hosts, launch, files),
                    revision=commit if git_project(task) is not None else None)


def explain_change(before: dict[str, str] | None, after: dict[str, str]) -> str:
    """The names of the parts that differ, for a refusal message."""
    changed = [name for name, digest in after.items() if (before or {}).get(name) != digest]
    if before and changed:
        return ", ".join(changed)
    return "the task definition, playbook content, variables, targets or credential"
