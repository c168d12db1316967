"""RQ jobs for projects: a sync runs on a worker, never in a web request.

Job ids are unique: a push arriving while a sync runs gets its own job, and the project's
lock (gitsync.locked) makes the two run one after the other.
"""
from __future__ import annotations

import logging
import uuid

from rq import Queue

from server.core import db
from server.core.models import Project, Schedule
from server.core.redis_conn import redis

log = logging.getLogger(__name__)
JOB_FUNC = "server.runs.project_jobs.sync_job"


def enqueue_sync(queue_name: str, project_id: int, actor: str | None) -> None:
    """Push a sync job; raises when Redis cannot take it (the caller records that)."""
    Queue(queue_name, connection=redis()).enqueue_call(
        JOB_FUNC, args=(project_id, actor), job_id=f"project-sync-{project_id}-{uuid.uuid4().hex[:12]}",
        timeout=900, result_ttl=600, failure_ttl=86400)


def sync_job(project_id: int, actor: str | None = None) -> str:
    """Sync project ``project_id``; returns its sync status."""
    from server.catalog import projects
    from server.runs.worker import _after_fork, _get_app

    app = _get_app()
    with app.app_context():
        _after_fork()
        session = db.session()
        try:
            project = session.get(Project, int(project_id))
            if project is None or project.is_local:
                return "no such project"
            projects.sync(session, project, instance_dir=app.config["TM"].instance_dir, actor=actor)
            return project.sync_status
        finally:
            db.session.remove()


def sync_on_launch(session, ex, instance_dir) -> None:
    """A task whose git project syncs on launch runs the branch as it is now.

    Only a run no approval binds: an approved request or an approved schedule's run keeps
    the commit its approval covered. A failed sync leaves the run on the last good commit
    (the project page shows why the sync failed).
    """
    from server.catalog import projects
    from server.executions.fingerprint import git_project, revision_of

    project = git_project(ex.task)
    if project is None or not project.sync_on_launch or ex.approval is not None:
        return
    schedule = session.get(Schedule, ex.schedule_id) if ex.schedule_id else None
    if schedule is not None and schedule.approval_status is not None:
        return
    try:
        projects.sync(session, project, instance_dir=instance_dir, actor="launch")
    except Exception:  # noqa: BLE001 - the run goes ahead on the commit it was requested at
        log.warning("execution %s: sync on launch of project %s failed", ex.id, project.name, exc_info=True)
        session.rollback()
        return
    if project.sync_status == "ok" and project.revision != ex.revision:
        ex.revision, ex.content_hash = revision_of(ex.task)
        session.commit()
