"""The data model. The database is the source of truth; Redis only carries execution ids.

One class per concept. Statuses are ``ExecutionStatus`` and ``OperationStatus`` (string enums
whose values are the stored strings) with their sets (``EXECUTION_FINAL``, ``EXECUTION_FAILED``,
``EXECUTION_RELAUNCHABLE``...), so that the API, the worker and the scheduler share one
vocabulary (see ../shared/CONTRACT.md).
"""
from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from server.core.db import Base


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class TZDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite drops tzinfo otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime stored; use timezone-aware UTC")
            value = value.astimezone(timezone.utc)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


ROLES = ("admin", "author", "operator", "approver", "auditor")
PROTOCOLS = ("ssh", "winrm", "telnet", "https", "ldaps", "rdp", "vnc", "x11", "local")
CREDENTIAL_KINDS = ("ssh_key", "password", "token", "certificate", "vault_password")
TASK_KINDS = ("commands", "playbook")
PERMISSIONS = ("view", "execute", "schedule", "edit")
SYNC_STATUSES = ("never", "syncing", "ok", "failed")  # Project.sync_status
LOCAL_PROJECT = "local"  # the built-in project: TASKMANAGER_PLAYBOOK_DIR
STEP_IGNORED = "ignored"  # a step that failed under ignore_errors: shown "failed (ignored)", fails nothing


class ExecutionStatus(StrEnum):
    """Where an execution is. The values are what the database and the API hold.

    A ``StrEnum`` (not ``class X(str, Enum)``): its members *are* their strings for ``==``,
    hashing, SQL parameters and ``json.dumps``, and also for ``str()``, f-strings and
    templates, where a plain ``(str, Enum)`` member would print ``ExecutionStatus.FAILED``.
    """

    WAITING_APPROVAL = "waiting_approval"
    REJECTED = "rejected"
    EXPIRED = "expired"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    LOST = "lost"


class OperationStatus(StrEnum):
    """Where one host of an execution is (same reasons as ``ExecutionStatus`` for a StrEnum)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


EXECUTION_STATUSES = tuple(ExecutionStatus)  # in the contract's order
# Nothing more will happen to it.
EXECUTION_FINAL = frozenset({
    ExecutionStatus.REJECTED, ExecutionStatus.EXPIRED, ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED,
    ExecutionStatus.CANCELLED, ExecutionStatus.TIMED_OUT, ExecutionStatus.LOST,
})
# It went wrong (reports' failure rates, the "execution.failed" notification).
EXECUTION_FAILED = frozenset({ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT, ExecutionStatus.LOST})
# Final and not a refused request: it may be run again (and reports count it as a run).
EXECUTION_RELAUNCHABLE = EXECUTION_FINAL - {ExecutionStatus.REJECTED, ExecutionStatus.EXPIRED}
# Not started yet: a cancel ends these at once.
EXECUTION_NOT_STARTED = frozenset({ExecutionStatus.WAITING_APPROVAL, ExecutionStatus.QUEUED})
# Not final yet: the reports' "in flight" list.
EXECUTION_OPEN = frozenset(ExecutionStatus) - EXECUTION_FINAL

OPERATION_STATUSES = tuple(OperationStatus)
OPERATION_FINAL = frozenset({
    OperationStatus.SUCCEEDED, OperationStatus.FAILED, OperationStatus.UNREACHABLE, OperationStatus.SKIPPED,
    OperationStatus.CANCELLED,
})
# The host went wrong (reports, notifications); a cancelled host is not a failure.
OPERATION_FAILED = frozenset({OperationStatus.FAILED, OperationStatus.UNREACHABLE})
# The host did what was asked: a relaunch on the failed hosts leaves these out.
OPERATION_OK = frozenset({OperationStatus.SUCCEEDED, OperationStatus.SKIPPED})
# Not finished: what a lost or refused run closes.
OPERATION_OPEN = frozenset({OperationStatus.PENDING, OperationStatus.RUNNING})

host_groups = Table(
    "host_groups",
    Base.metadata,
    Column("host_id", ForeignKey("hosts.id", ondelete="CASCADE"), primary_key=True),
    Column("group_id", ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
)
group_children = Table(
    "group_children",
    Base.metadata,
    Column("parent_id", ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    Column("child_id", ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
)
task_hosts = Table(
    "task_hosts",
    Base.metadata,
    Column("task_id", ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("host_id", ForeignKey("hosts.id", ondelete="CASCADE"), primary_key=True),
)
task_groups = Table(
    "task_groups",
    Base.metadata,
    Column("task_id", ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("group_id", ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
)
policy_users = Table(
    "policy_users",
    Base.metadata,
    Column("policy_id", ForeignKey("policies.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
)
policy_tasks = Table(
    "policy_tasks",
    Base.metadata,
    Column("policy_id", ForeignKey("policies.id", ondelete="CASCADE"), primary_key=True),
    Column("task_id", ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(20))
    email: Mapped[str | None] = mapped_column(String(255))
    timezone: Mapped[str | None] = mapped_column(String(64))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False)
    # Set by an admin for someone else (a reset): another person knows it, so no API token
    # may be minted with it until its owner chooses his own (auth.issue_token).
    password_from_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    last_login_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    # Where the account lives: "local" (password here), "ldap" or "oidc" (the directory
    # decides: no local password, role and policies mapped from groups at each sign-in).
    auth_source: Mapped[str] = mapped_column(String(10), default="local", server_default="local")
    external_id: Mapped[str | None] = mapped_column(String(512))  # LDAP DN or OIDC issuer|sub
    directory_checked_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    mapped_policy_ids: Mapped[list[int] | None] = mapped_column(JSON)  # memberships the mapping gave
    # TOTP: the secret vault-encrypted; the last accepted time step (replays refused);
    # recovery codes as SHA-256 hashes, each removed once used.
    totp_secret: Mapped[bytes | None] = mapped_column(LargeBinary)
    totp_confirmed_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    totp_last_step: Mapped[int | None] = mapped_column(Integer)
    recovery_codes: Mapped[list[str] | None] = mapped_column(JSON)

    # flask-login protocol
    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_anonymous(self) -> bool:
        return False

    def get_id(self) -> str:
        return str(self.id)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(80), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    scopes: Mapped[list[str] | None] = mapped_column(JSON)  # None: every scope the owner's role holds
    expires_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    mfa_at: Mapped[datetime | None] = mapped_column(TZDateTime)  # minted with a second factor
    user: Mapped[User] = relationship()


class WebSession(Base):
    """One web sign-in. The cookie carries a random key; only its SHA-256 is stored, and a
    revoked (signed-out, password changed or reset) or idle row no longer authenticates."""

    __tablename__ = "web_sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    address: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    method: Mapped[str | None] = mapped_column(String(10))  # password, ldap, oidc
    mfa_at: Mapped[datetime | None] = mapped_column(TZDateTime)  # last second factor given


class IdentitySetting(Base):
    """Admin-edited sign-in settings, one JSON document per kind (``ldap``, ``oidc``, ``mfa``).
    Secrets are never here: they are named vault credentials."""

    __tablename__ = "identity_settings"
    name: Mapped[str] = mapped_column(String(20), primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, onupdate=utcnow)


class Group(Base):
    __tablename__ = "groups"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    vars: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    hosts: Mapped[list["Host"]] = relationship(secondary=host_groups, back_populates="groups")
    # Ansible's group tree: children inherit membership, their vars beat their parents'.
    priority: Mapped[int | None] = mapped_column(Integer)  # ansible_group_priority; None = Ansible's 1
    children: Mapped[list["Group"]] = relationship(
        secondary=group_children, primaryjoin="Group.id == group_children.c.parent_id",
        secondaryjoin="Group.id == group_children.c.child_id", back_populates="parents", order_by="Group.name")
    parents: Mapped[list["Group"]] = relationship(
        secondary=group_children, primaryjoin="Group.id == group_children.c.child_id",
        secondaryjoin="Group.id == group_children.c.parent_id", back_populates="children", order_by="Group.name")

    def subtree(self) -> list["Group"]:
        """This group and every group below it, each once (as Ansible's ``hosts: <group>``
        reaches the hosts of its children); safe on a cyclic tree the checks should forbid."""
        return self._closure("children")

    def lineage(self) -> list["Group"]:
        """This group and every group above it, each once (a host in ``east`` is in ``usa``)."""
        return self._closure("parents")

    def member_hosts(self) -> list["Host"]:
        """The hosts of this group and of every group below it, each once."""
        found: dict[int, Host] = {}
        for group in self.subtree():
            for host in group.hosts:
                found.setdefault(host.id, host)
        return list(found.values())

    def _closure(self, edge: str) -> list["Group"]:
        seen: dict[int, Group] = {}
        todo = [self]
        while todo:
            group = todo.pop()
            if group.id not in seen:
                seen[group.id] = group
                todo.extend(getattr(group, edge))
        return list(seen.values())


class Host(Base):
    __tablename__ = "hosts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    address: Mapped[str] = mapped_column(String(255))
    port: Mapped[int | None] = mapped_column(Integer)
    protocol: Mapped[str] = mapped_column(String(20), default="ssh")
    vars: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, onupdate=utcnow)
    groups: Mapped[list[Group]] = relationship(secondary=host_groups, back_populates="hosts", order_by="Group.name")


class Credential(Base):
    __tablename__ = "credentials"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    kind: Mapped[str] = mapped_column(String(20))
    username: Mapped[str | None] = mapped_column(String(255))
    # Fernet tokens (vault.py); never serialised by the API.
    secret_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    become_password_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    become_method: Mapped[str | None] = mapped_column(String(20))
    become_user: Mapped[str | None] = mapped_column(String(64))
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # non-secret, per protocol
    version: Mapped[int] = mapped_column(Integer, default=1)  # bumped whenever a secret changes
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, onupdate=utcnow)


class Project(Base):
    """A source of playbooks: a git repository cloned into a mirror under ``instance/``, or
    the built-in ``local`` project (``url`` empty: the playbook directory)."""

    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    url: Mapped[str] = mapped_column(String(1000), default="")
    branch: Mapped[str] = mapped_column(String(255), default="")
    credential_id: Mapped[int | None] = mapped_column(ForeignKey("credentials.id", ondelete="RESTRICT"))
    sync_on_launch: Mapped[bool] = mapped_column(Boolean, default=False)
    revision: Mapped[str | None] = mapped_column(String(64))  # commit of the last good sync
    synced_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    sync_status: Mapped[str] = mapped_column(String(20), default="never")
    sync_error: Mapped[str | None] = mapped_column(Text)
    playbooks: Mapped[list[str]] = mapped_column(JSON, default=list)  # files holding plays at ``revision``
    webhook_secret_enc: Mapped[bytes | None] = mapped_column(LargeBinary)  # vault.py; write-only
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, onupdate=utcnow)
    credential: Mapped[Credential | None] = relationship()

    @property
    def is_local(self) -> bool:
        return not self.url


class Task(Base):
    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    kind: Mapped[str] = mapped_column(String(20))
    commands: Mapped[list[str]] = mapped_column(JSON, default=list)
    playbook: Mapped[str | None] = mapped_column(String(500))
    vars: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    credential_id: Mapped[int | None] = mapped_column(ForeignKey("credentials.id", ondelete="RESTRICT"))
    become: Mapped[bool] = mapped_column(Boolean, default=False)
    timeout_s: Mapped[int] = mapped_column(Integer, default=3600)
    allow_simultaneous: Mapped[bool] = mapped_column(Boolean, default=False)
    retry_attempts: Mapped[int] = mapped_column(Integer, default=1)
    retry_delay_s: Mapped[int] = mapped_column(Integer, default=10)
    retry_on_lost: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, onupdate=utcnow)
    credential: Mapped[Credential | None] = relationship(foreign_keys="Task.credential_id")
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"), index=True)
    vault_credential_id: Mapped[int | None] = mapped_column(ForeignKey("credentials.id"))
    project: Mapped[Project | None] = relationship()
    vault_credential: Mapped[Credential | None] = relationship(foreign_keys=[vault_credential_id])
    hosts: Mapped[list[Host]] = relationship(secondary=task_hosts, order_by="Host.name")
    groups: Mapped[list[Group]] = relationship(secondary=task_groups, order_by="Group.name")
    # launch variables and options (catalog/launch.py)
    variables: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=list)
    allowed_tags: Mapped[list[str] | None] = mapped_column(JSON, default=list)
    serial: Mapped[Any | None] = mapped_column(JSON)  # None, a number, "25%" or a list of them
    max_fail_percentage: Mapped[int | None] = mapped_column(Integer)


class Execution(Base):
    __tablename__ = "executions"
    __table_args__ = (
        # Exactly once per (schedule, fire time), enforced by the database.
        UniqueConstraint("schedule_id", "scheduled_for", name="uq_execution_schedule_fire"),
        Index("ix_executions_task_created", "task_id", "created_at"),
        Index("ix_executions_status_created", "status", "created_at"),
        Index("ix_executions_created", "created_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(20), default=ExecutionStatus.QUEUED.value)
    trigger: Mapped[str] = mapped_column(String(20), default="manual")
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    reason: Mapped[str | None] = mapped_column(Text)
    vars: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    limit_hosts: Mapped[list[str] | None] = mapped_column(JSON)  # relaunch on failed hosts
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("executions.id", ondelete="SET NULL"))
    schedule_id: Mapped[int | None] = mapped_column(ForeignKey("schedules.id", ondelete="SET NULL"))
    scheduled_for: Mapped[datetime | None] = mapped_column(TZDateTime)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    started_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    revision: Mapped[str | None] = mapped_column(String(120))
    content_hash: Mapped[str | None] = mapped_column(String(64))
    fingerprint: Mapped[str | None] = mapped_column(String(64))  # what an approval binds
    check_mode: Mapped[bool] = mapped_column(Boolean, default=False)
    # Worker lease: a live worker refreshes heartbeat_at; the reaper marks stale ones lost.
    worker_name: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    message: Mapped[str | None] = mapped_column(Text)  # why it failed / was refused
    host_count: Mapped[int] = mapped_column(Integer, default=0)
    hosts_done: Mapped[int] = mapped_column(Integer, default=0)
    output_pruned_at: Mapped[datetime | None] = mapped_column(TZDateTime)  # retention (reaper.py)
    ticket: Mapped[str | None] = mapped_column(String(200))
    tags: Mapped[list[str] | None] = mapped_column(JSON)
    skip_tags: Mapped[list[str] | None] = mapped_column(JSON)
    limit_pattern: Mapped[str | None] = mapped_column(String(1000))  # as given; limit_hosts is what it matched
    # secret launch values, vault-encrypted, only while the run may still start (erased when final)
    secret_vars_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    task: Mapped[Task] = relationship()
    requested_by: Mapped[User | None] = relationship()
    operations: Mapped[list["Operation"]] = relationship(
        back_populates="execution", order_by="Operation.host_name", cascade="all, delete-orphan"
    )
    # The approval request of a run that needed one (loaded with the run: pages and the API show it).
    approval: Mapped["ApprovalRequest | None"] = relationship(
        back_populates="execution", lazy="selectin", cascade="all, delete-orphan"
    )

    @property
    def approval_level(self) -> int:
        """The level to decide now (the last one decided once closed); 0 without approval."""
        return self.approval.level if self.approval is not None else 0

    @property
    def approval_expires_at(self) -> datetime | None:
        return self.approval.expires_at if self.approval is not None else None

    @property
    def duration_s(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class Operation(Base):
    """The result of one execution on one host."""

    __tablename__ = "operations"
    __table_args__ = (
        UniqueConstraint("execution_id", "host_name", name="uq_operation_execution_host"),
        Index("ix_operations_host_status", "host_name", "status", "execution_id"),  # covers per-host reports
        # Covering index for report aggregates (failing hosts, per-host summary, CSV failed counts).
        Index("ix_operations_execution_status_host", "execution_id", "status", "host_name"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    execution_id: Mapped[int] = mapped_column(ForeignKey("executions.id", ondelete="CASCADE"))
    host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"))
    host_name: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(20), default=OperationStatus.PENDING.value)
    rc: Mapped[int | None] = mapped_column(Integer)
    stdout: Mapped[str] = mapped_column(Text, default="")
    stderr: Mapped[str] = mapped_column(Text, default="")
    message: Mapped[str | None] = mapped_column(Text)  # e.g. the unreachable reason
    started_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    slice: Mapped[int | None] = mapped_column(Integer)  # which slice runs this host (None: not sliced)
    execution: Mapped[Execution] = relationship(back_populates="operations")
    steps: Mapped[list["Step"]] = relationship(
        back_populates="operation", order_by="Step.seq", cascade="all, delete-orphan"
    )


class Step(Base):
    """One Ansible task's result on one host."""

    __tablename__ = "steps"
    __table_args__ = (Index("ix_steps_operation_seq", "operation_id", "seq"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    operation_id: Mapped[int] = mapped_column(ForeignKey("operations.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(20))
    rc: Mapped[int | None] = mapped_column(Integer)
    stdout: Mapped[str | None] = mapped_column(Text)
    stderr: Mapped[str | None] = mapped_column(Text)
    changed: Mapped[bool] = mapped_column(Boolean, default=False)
    duration_s: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    operation: Mapped[Operation] = relationship(back_populates="steps")


class Schedule(Base):
    __tablename__ = "schedules"
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    cron: Mapped[str] = mapped_column(String(120))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    start_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    end_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    misfire_grace_s: Mapped[int] = mapped_column(Integer, default=600)
    vars: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    secret_vars_enc: Mapped[bytes | None] = mapped_column(LargeBinary)  # its secret launch values
    next_fire_at: Mapped[datetime | None] = mapped_column(TZDateTime, index=True)
    last_fire_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    approved_fingerprint: Mapped[str | None] = mapped_column(String(64))
    approval_status: Mapped[str | None] = mapped_column(String(20))  # None, pending, approved, rejected
    suspended_reason: Mapped[str | None] = mapped_column(Text)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, onupdate=utcnow)
    task: Mapped[Task] = relationship()


class ScheduleFire(Base):
    """One row per (schedule, due instant): fired, missed or blocked. The unique key makes
    firing exactly-once across any number of scheduler processes."""

    __tablename__ = "schedule_fires"
    __table_args__ = (UniqueConstraint("schedule_id", "due_at", name="uq_schedule_fire"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    schedule_id: Mapped[int] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    due_at: Mapped[datetime] = mapped_column(TZDateTime)
    outcome: Mapped[str] = mapped_column(String(20))  # fired, missed, blackout, paused, suspended
    execution_id: Mapped[int | None] = mapped_column(ForeignKey("executions.id", ondelete="SET NULL"))
    detail: Mapped[str | None] = mapped_column(Text)
    recorded_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)


class Blackout(Base):
    __tablename__ = "blackouts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    starts_at: Mapped[datetime] = mapped_column(TZDateTime)
    ends_at: Mapped[datetime] = mapped_column(TZDateTime)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)


class Setting(Base):
    """Small process-wide switches kept in the database (e.g. ``schedules_paused``)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)


class Policy(Base):
    __tablename__ = "policies"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    permissions: Mapped[list[str]] = mapped_column(JSON, default=list)
    requires_approval: Mapped[bool] = mapped_column(Boolean, default=False)
    requires_reason: Mapped[bool] = mapped_column(Boolean, default=False)
    approval_ttl_s: Mapped[int] = mapped_column(Integer, default=86400)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    requires_ticket: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    ticket_pattern: Mapped[str | None] = mapped_column(String(200))
    reasons: Mapped[list[str] | None] = mapped_column(JSON, default=list)  # empty: any reason
    users: Mapped[list[User]] = relationship(secondary=policy_users, order_by="User.username")
    tasks: Mapped[list[Task]] = relationship(secondary=policy_tasks, order_by="Task.name")
    approvers: Mapped[list["PolicyApprover"]] = relationship(
        cascade="all, delete-orphan", order_by="PolicyApprover.level"
    )


class PolicyApprover(Base):
    __tablename__ = "policy_approvers"
    __table_args__ = (UniqueConstraint("policy_id", "user_id", "level"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    policy_id: Mapped[int] = mapped_column(ForeignKey("policies.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    level: Mapped[int] = mapped_column(Integer, default=1)
    user: Mapped[User] = relationship()


class ApprovalStatus(StrEnum):
    """Where an approval request is."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    REFUSED = "refused"  # the task changed before the last approval
    RENEWED = "renewed"  # a schedule's request replaced by a new one (its task changed)
    CANCELLED = "cancelled"  # the run was cancelled while waiting


class ApprovalRequest(Base):
    """One request for approval, of a run or of a schedule, stored the same way for both.

    What was asked is snapshotted when it is asked: the approvers of each level, the
    fingerprint and its parts (``executions/fingerprint.py``), the hosts the run will touch.
    ``level`` is the level to decide now (the last one decided once closed). A run has at
    most one request; a schedule gets a new one each time it must be approved again, the
    latest being the current one. Decisions are ``Approval`` rows (``approvals.py``).
    """

    __tablename__ = "approval_requests"
    id: Mapped[int] = mapped_column(primary_key=True)
    execution_id: Mapped[int | None] = mapped_column(
        ForeignKey("executions.id", ondelete="CASCADE"), unique=True)
    schedule_id: Mapped[int | None] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(20), default=ApprovalStatus.PENDING.value, index=True)
    level: Mapped[int] = mapped_column(Integer, default=1)
    levels: Mapped[dict[str, list[int]]] = mapped_column(JSON, default=dict)  # {"1": [user ids]}; [] = any approver
    parts: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)  # component -> digest
    policies: Mapped[list[int]] = mapped_column(JSON, default=list)
    hosts: Mapped[list[str]] = mapped_column(JSON, default=list)
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    execution: Mapped[Execution | None] = relationship(back_populates="approval")
    schedule: Mapped[Schedule | None] = relationship()
    requested_by: Mapped[User | None] = relationship()
    decisions: Mapped[list["Approval"]] = relationship(
        back_populates="request", order_by="Approval.id", cascade="all, delete-orphan"
    )

    @property
    def task(self) -> Task:
        return self.execution.task if self.execution is not None else self.schedule.task  # type: ignore[union-attr]


class Approval(Base):
    """One approver's decision on one level of an approval request. ``execution_id`` or
    ``schedule_id`` repeat the request's subject, so a list of decisions links without a join."""

    __tablename__ = "approvals"
    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("approval_requests.id", ondelete="CASCADE"), index=True)
    execution_id: Mapped[int | None] = mapped_column(ForeignKey("executions.id", ondelete="CASCADE"), index=True)
    schedule_id: Mapped[int | None] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"), index=True)
    level: Mapped[int] = mapped_column(Integer)
    approver_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    decision: Mapped[str] = mapped_column(String(20))  # approved, rejected
    comment: Mapped[str | None] = mapped_column(Text)
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    approver: Mapped[User] = relationship()
    request: Mapped[ApprovalRequest] = relationship(back_populates="decisions")


class AuditLog(Base):
    """Append-only, hash-chained: each row's hash covers its content and the previous hash."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    ts: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, index=True)
    actor: Mapped[str | None] = mapped_column(String(120))
    action: Mapped[str] = mapped_column(String(80), index=True)
    target_type: Mapped[str | None] = mapped_column(String(40))
    target_id: Mapped[str | None] = mapped_column(String(80))
    outcome: Mapped[str] = mapped_column(String(20), default="ok")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class NotificationChannel(Base):
    __tablename__ = "notification_channels"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    url_enc: Mapped[bytes] = mapped_column(LargeBinary)  # Apprise URLs carry credentials
    events: Mapped[list[str]] = mapped_column(JSON, default=lambda: ["execution.failed"])
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)


class NotificationDelivery(Base):
    __tablename__ = "notification_deliveries"
    id: Mapped[int] = mapped_column(primary_key=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("notification_channels.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(40))
    title: Mapped[str] = mapped_column(String(500))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending, sent, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    recipient: Mapped[str | None] = mapped_column(String(255))  # a subscriber's e-mail, through a mail channel


class ExecutionSlice(Base):
    """One slice of a big execution: its own ansible-runner process, on any worker.

    The execution stays one record with one operation per host (``Operation.slice`` says
    which slice runs it); each slice claims its row, beats its own heartbeat (the reaper
    declares the execution lost when one slice's stops) and records its outcome. Status
    values come from ``ExecutionStatus`` (queued, running, then a final one)."""

    __tablename__ = "execution_slices"
    __table_args__ = (UniqueConstraint("execution_id", "index", name="uq_execution_slice"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    execution_id: Mapped[int] = mapped_column(ForeignKey("executions.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default=ExecutionStatus.QUEUED.value)
    hosts: Mapped[int] = mapped_column(Integer, default=0)
    worker_name: Mapped[str | None] = mapped_column(String(200))
    message: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(TZDateTime)


class TaskSubscription(Base):
    """A user's "notify me" on a task: the failures of its runs by e-mail, while he may see it."""

    __tablename__ = "task_subscriptions"
    __table_args__ = (UniqueConstraint("user_id", "task_id", name="uq_task_subscriptions_user_task"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    user: Mapped[User] = relationship()
