"""Playbook projects: git repositories Task Manager clones and keeps in sync.

The write path shared by the API, the pages and the CLI (validate, audit, 4xx naming the
field), and the sync itself (``sync``), which the RQ job ``runs/project_jobs.sync_job``
calls: never a web request. The built-in project ``local`` is the playbook directory of
earlier versions (``TASKMANAGER_PLAYBOOK_DIR``); it is never synced, edited or deleted.

A sync fetches the project's branch (or the remote's default) into a bare mirror under
``instance/projects/<id>/`` (runs/gitsync.py), records the commit as ``revision`` and the
files holding plays at that commit as ``playbooks``. Runs use a commit, never the mirror's
moving state: see ``commit_for`` and runs/prepare.py.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import shutil
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.core import audit
from server.core.errors import Conflict, Forbidden, ValidationError
from server.core.models import LOCAL_PROJECT, Credential, Project, Task, User, utcnow
from server.core.validation import Fields, Invalid, boolean, text
from server.core.vault import vault
from server.people import access
from server.runs import gitsync, requirements

PROJECT_FIELDS = ("name", "url", "branch", "credential", "sync_on_launch", "webhook_secret")
READ_ONLY = ("id", "revision", "synced_at", "sync_status", "sync_error", "has_webhook_secret", "created_at",
             "updated_at", "playbooks")
SCP_RE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9][A-Za-z0-9.-]*:[^\s:][^\s]*$")
URL_RE = re.compile(r"^(ssh|https|file)://[^\s]+$")
BRANCH_RE = re.compile(r"^(?!-)(?!/)(?!.*(\.\.|@\{|//|\.lock$|/$|\.$))[A-Za-z0-9._/+-]{1,255}$")
MIN_WEBHOOK_SECRET = 16
PROJECT_NAME = text(120)


def project_dir(instance_dir: Path, project: Project) -> Path:
    """Where the project's mirror, pinned host keys and lock live."""
    return Path(instance_dir) / "projects" / str(project.id)


def url_kind(url: str) -> str:
    """``ssh``, ``https`` or ``file`` (scp-like ``user@host:path`` is ssh)."""
    return "ssh" if SCP_RE.match(url) else url.split("://", 1)[0]


def check_url(value: Any) -> str:
    url = text(1000)(value).strip()
    if not (URL_RE.match(url) or SCP_RE.match(url)):
        raise Invalid("must be an ssh://, user@host:path, https:// or file:// git URL")
    kind = url_kind(url)
    rest = url.split("://", 1)[1] if "://" in url else url
    authority = rest.split("/", 1)[0]
    if kind == "https" and ":" in authority.split("@")[0] and "@" in authority:
        raise Invalid("must not hold a password or token: give it as the project's credential")
    if kind == "https" and "@" in authority:
        raise Invalid("must not hold a user name: give it in the project's credential")
    if kind == "file" and not rest.startswith("/"):
        raise Invalid("file:// URLs need an absolute path (file:///srv/git/repo.git)")
    if kind in ("ssh", "https") and (not authority or authority.lstrip("@").startswith("-")):
        raise Invalid("must name a host")
    if kind in ("ssh", "https") and "://" in url:
        try:
            port = urlsplit(url).port
        except ValueError:
            port = 0
        if port == 0:
            raise Invalid("has a port that is not a number from 1 to 65535")
    return url


def check_branch(value: Any) -> str:
    branch = text(255, allow_empty=True, nullable=True)(value) or ""
    branch = branch.strip()
    if branch and not BRANCH_RE.match(branch):
        raise Invalid("must be a branch or tag name (letters, digits, '.', '_', '-', '/'), or empty for "
                      "the repository's default branch")
    return branch


def _webhook_secret(value: Any) -> str | None:
    if value is None or value == "":
        return None
    secret = text(200)(value)
    if len(secret) < MIN_WEBHOOK_SECRET:
        raise Invalid(f"must be at least {MIN_WEBHOOK_SECRET} characters")
    return secret


CREDENTIAL_FOR = {"ssh": ("ssh_key",), "https": ("token", "password"), "file": ()}


def check_project(session: Session, data: Any, user: User | None, project: Project | None = None) -> dict[str, Any]:
    """Validated values for a new project or the changed fields of ``project``."""
    if project is not None and project.is_local:
        raise Conflict(f"project {LOCAL_PROJECT!r} is the built-in playbook directory; it cannot be changed",
                       field="name")
    f = Fields(data, PROJECT_FIELDS, partial=project is not None, ignored=READ_ONLY)
    f.take("name", PROJECT_NAME, required=True)
    f.take("url", check_url, required=True)
    f.take("branch", check_branch, default="")
    f.take("credential", text(120, nullable=True, allow_empty=True), default=None)
    f.take("sync_on_launch", boolean, default=False)
    f.take("webhook_secret", _webhook_secret, default=None)
    f.raise_if_invalid()
    clean = f.clean
    name = clean.get("name")
    if name is not None and (project is None or name != project.name):
        if name == LOCAL_PROJECT or session.execute(select(Project.id).where(Project.name == name)).first():
            raise Conflict(f"a project named {name!r} already exists", field="name")
    url = clean.get("url", project.url if project else "")
    kind = url_kind(url)
    if kind == "file" and "url" in clean and user is not None and not access.may_target_local(user):
        raise Forbidden("file:// URLs read repositories on the Task Manager server: only admins may use them",
                        field="url")
    if "credential" in clean and clean["credential"]:
        cred = session.execute(select(Credential).where(Credential.name == clean["credential"])).scalar_one_or_none()
        visible = access.visible_credential_ids(session, user) if user is not None else None
        if cred is None or (visible is not None and cred.id not in visible):
            raise ValidationError(f"unknown credential: {clean['credential']}", field="credential")
        clean["credential"] = cred
    elif "credential" in clean:
        clean["credential"] = None
    cred = clean["credential"] if "credential" in clean else (project.credential if project else None)
    if cred is not None and cred.kind not in CREDENTIAL_FOR[kind]:
        wanted = " or ".join(CREDENTIAL_FOR[kind]) or "no credential"
        raise ValidationError(f"a {kind} URL takes {wanted}, not a {cred.kind} credential", field="credential")
    return clean


def _apply(project: Project, clean: dict[str, Any]) -> list[str]:
    changed = []
    for key, value in clean.items():
        if key == "webhook_secret":
            if vault().decrypt(project.webhook_secret_enc) != value:
                project.webhook_secret_enc = None if value is None else vault().encrypt(value)
                changed.append(key)
            continue
        old = getattr(project, key)
        same = (old.id if old else None) == (value.id if value else None) if key == "credential" else old == value
        if not same:
            setattr(project, key, value)
            changed.append(key)
    return changed


def create_project(session: Session, data: Any, *, user: User | None) -> Project:
    clean = check_project(session, data, user)
    project = Project(name=clean["name"], url=clean["url"], branch="", sync_status="never", playbooks=[])
    _apply(project, clean)
    session.add(project)
    session.flush()
    audit.record(session, "project.create", actor=_actor(user), target=project, name=project.name,
                 url=project.url, branch=project.branch,
                 credential=project.credential.name if project.credential else None)
    return project


def update_project(session: Session, project: Project, data: Any, *, user: User | None,
                   instance_dir: Path) -> list[str]:
    clean = check_project(session, data, user, project)
    changed = _apply(project, clean)
    if "url" in changed:  # another repository: its host keys and mirror are not this one's
        shutil.rmtree(project_dir(instance_dir, project), ignore_errors=True)
    session.flush()
    if changed:
        audit.record(session, "project.update", actor=_actor(user), target=project, name=project.name,
                     changed=sorted(changed))
    return changed


def tasks_using(session: Session, project: Project) -> list[str]:
    return list(session.execute(select(Task.name).where(Task.project_id == project.id).order_by(Task.name)).scalars())


def delete_project(session: Session, project: Project, *, user: User | None, instance_dir: Path) -> None:
    if project.is_local:
        raise Conflict(f"project {LOCAL_PROJECT!r} is built in; it cannot be deleted", field="project")
    users = tasks_using(session, project)
    if users:
        shown = ", ".join(repr(n) for n in users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
        raise Conflict(f"project {project.name!r} is used by task {shown}; change those tasks first", field="project")
    audit.record(session, "project.delete", actor=_actor(user), target=project, name=project.name)
    shutil.rmtree(project_dir(instance_dir, project), ignore_errors=True)
    session.delete(project)
    session.flush()


def forget_host_keys(session: Session, project: Project, *, user: User | None, instance_dir: Path) -> bool:
    """Forget the pinned SSH host key of the project's git server (after a legitimate rebuild)."""
    path = project_dir(instance_dir, project) / "known_hosts"
    existed = path.exists()
    path.unlink(missing_ok=True)
    audit.record(session, "project.hostkey_forget", actor=_actor(user), target=project, name=project.name,
                 existed=existed)
    return existed


def local_project(session: Session) -> Project:
    project = session.execute(select(Project).where(Project.name == LOCAL_PROJECT)).scalar_one_or_none()
    if project is None:  # a database made by create_all (tests) rather than the migration
        project = Project(name=LOCAL_PROJECT, url="", branch="", sync_status="ok", playbooks=[])
        session.add(project)
        session.flush()
    return project


def by_name(session: Session, name: str) -> Project | None:
    if name == LOCAL_PROJECT:
        return local_project(session)
    return session.execute(select(Project).where(Project.name == name)).scalar_one_or_none()


def task_project(session: Session, clean: dict[str, Any], task: Task | None) -> Project | None:
    """The project a playbook task will use: the one named in ``clean`` (None if unknown),
    else the task's own, else ``local``."""
    if "project" in clean:
        name = clean["project"] or LOCAL_PROJECT
        clean["project_name"] = name
        return by_name(session, name)
    if task is not None and task.project is not None:
        return task.project
    return local_project(session)


def _actor(user: User | None) -> str | None:
    return user.username if user else None


# --------------------------------------------------------------------------- sync

def mark_syncing(session: Session, project: Project, *, actor: str | None, reason: str) -> None:
    """Record that a sync was asked for (the RQ job does it); the caller commits and enqueues."""
    if project.is_local:
        raise Conflict(f"project {LOCAL_PROJECT!r} is the playbook directory; there is nothing to sync",
                       field="project")
    project.sync_status = "syncing"
    audit.record(session, "project.sync_request", actor=actor, target=project, name=project.name, reason=reason)


def queue_failed(session: Session, project: Project) -> None:
    project.sync_status = "failed"
    project.sync_error = "the sync could not be queued (Redis unreachable); try again when the queue is back"


def auth_for(project: Project) -> gitsync.Auth:
    cred = project.credential
    if cred is None:
        return gitsync.Auth()
    return gitsync.Auth(kind=cred.kind, secret=vault().decrypt(cred.secret_enc), username=cred.username)


def sync(session: Session, project: Project, *, instance_dir: Path, actor: str | None = None) -> Project:
    """Fetch the project, record its commit and playbooks; a failure is recorded, not raised.

    Runs under the project's lock, so two syncs of one project never overlap.
    """
    pdir = project_dir(instance_dir, project)
    before = project.revision
    with gitsync.locked(pdir):
        try:
            commit = gitsync.fetch(pdir, project.url, project.branch, auth_for(project))
            found = project.playbooks if commit == before else gitsync.playbooks_at(
                pdir, commit, before, list(project.playbooks or []) if project.sync_status == "ok" else None)
            requirements.install(pdir, commit)  # roles/collections requirements, in the sandbox
        except gitsync.GitError as err:
            project.sync_status, project.sync_error = "failed", str(err)
            audit.record(session, "project.sync", actor=actor, target=project, name=project.name,
                         outcome="failed", error=str(err))
            session.commit()
            return project
        project.revision, project.playbooks = commit, found
        project.sync_status, project.sync_error, project.synced_at = "ok", None, utcnow()
        audit.record(session, "project.sync", actor=actor, target=project, name=project.name, outcome="ok",
                     revision=commit, previous=before)
        session.commit()
    return project


def ensure_commit(project: Project, commit: str, instance_dir: Path) -> Path:
    """The project's directory, its mirror holding ``commit`` (fetched again if this worker lacks it)."""
    pdir = project_dir(instance_dir, project)
    if not gitsync.has_commit(pdir, commit):
        with gitsync.locked(pdir):
            gitsync.fetch(pdir, project.url, project.branch, auth_for(project))
        if not gitsync.has_commit(pdir, commit):
            raise gitsync.GitError(f"commit {commit[:12]} is no longer in the repository of project {project.name!r}")
    requirements.install(pdir, commit)  # a worker that had not synced this commit yet
    return pdir


# --------------------------------------------------------------------------- playbooks

def check_playbook_path(name: Any) -> str:
    """A relative path inside the project, no ``..``, a .yml/.yaml file."""
    if not isinstance(name, str) or not name.strip():
        raise ValidationError("'playbook' must be a path inside the project", field="playbook")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\x00" in name or "\\" in name:
        raise ValidationError("'playbook' must be a relative path inside the project, without '..'", field="playbook")
    if path.suffix not in gitsync.PLAYBOOK_SUFFIXES:
        raise ValidationError("'playbook' must be a .yml or .yaml file", field="playbook")
    return str(path)


def check_playbook_in(project: Project, name: Any) -> str:
    """``name`` if it is a playbook of the project's last good sync (git projects)."""
    path = check_playbook_path(name)
    if project.revision is None:
        raise ValidationError(f"project {project.name!r} has not been synced yet ({project.sync_status}"
                              + (f": {project.sync_error}" if project.sync_error else "") + ")", field="project")
    if path not in (project.playbooks or []):
        raise ValidationError(f"playbook {path!r} is not a playbook of project {project.name!r} at commit "
                              f"{project.revision[:12]}", field="playbook")
    return path


def playbook_text(project: Project, path: str) -> str:
    """The playbook's content at the project's last good sync (from the mirror)."""
    from flask import current_app

    pdir = project_dir(current_app.config["TM"].instance_dir, project)
    try:
        return gitsync.run_git(gitsync.mirror_of(pdir), "cat-file", "blob", f"{project.revision}:{path}")
    except gitsync.GitError:
        raise ValidationError(f"playbook {path!r} cannot be read from project {project.name!r}; sync it again",
                              field="playbook") from None


# --------------------------------------------------------------------------- webhook

def verify_webhook(project: Project, headers: dict[str, str], body: bytes) -> str:
    """Which forge sent an authentic push event; PermissionError when it is not authentic.

    GitHub and Gitea sign the body with HMAC-SHA256 (``X-Hub-Signature-256: sha256=...``,
    ``X-Gitea-Signature: <hex>``); GitLab sends the secret in ``X-Gitlab-Token``. All are
    compared in constant time.
    """
    secret = vault().decrypt(project.webhook_secret_enc)
    if not secret:
        raise PermissionError("this project has no webhook secret")
    lower = {k.lower(): v for k, v in headers.items()}
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if "x-hub-signature-256" in lower:
        given = lower["x-hub-signature-256"].removeprefix("sha256=")
        if hmac.compare_digest(given.encode(), digest.encode()):
            return "github"
    elif "x-gitea-signature" in lower:
        if hmac.compare_digest(lower["x-gitea-signature"].encode(), digest.encode()):
            return "gitea"
    elif "x-gitlab-token" in lower:
        if hmac.compare_digest(lower["x-gitlab-token"].encode(), secret.encode()):
            return "gitlab"
    raise PermissionError("missing or wrong webhook signature")


def public(project: Project) -> dict[str, Any]:
    return {
        "id": project.id,
        "name": project.name,
        "url": project.url,
        "branch": project.branch,
        "credential": project.credential.name if project.credential else None,
        "sync_on_launch": project.sync_on_launch,
        "revision": project.revision,
        "synced_at": project.synced_at.isoformat() if project.synced_at else None,
        "sync_status": project.sync_status,
        "sync_error": project.sync_error,
        "has_webhook_secret": project.webhook_secret_enc is not None,
        "created_at": project.created_at.isoformat() if project.created_at else None,
        "updated_at": project.updated_at.isoformat() if project.updated_at else None,
    }
