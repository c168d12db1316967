"""Who may do what: roles for resources, access policies for tasks.

Roles: ``admin`` (everything), ``author`` (hosts, credentials, tasks), ``operator``
(runs what policies grant), ``approver`` (decides requests), ``auditor`` (read-only:
executions, reports, audit). Task permissions come from the role plus every policy that
names the user.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import Forbidden
from .models import PERMISSIONS, Policy, Task, User, policy_tasks, policy_users

# Role -> resource actions it holds regardless of policies.
ROLE_GRANTS: dict[str, set[str]] = {
    "admin": {"hosts.view", "hosts.edit", "credentials.view", "credentials.edit", "tasks.create", "users.manage",
              "policies.manage", "notifications.manage", "audit.view", "reports.view", "schedules.admin", "rq.view"},
    "author": {"hosts.view", "hosts.edit", "credentials.view", "credentials.edit", "tasks.create", "reports.view"},
    "operator": {"hosts.view", "reports.view"},
    "approver": {"hosts.view", "reports.view"},
    "auditor": {"hosts.view", "credentials.view", "audit.view", "reports.view"},
}
# Role -> task permissions on every task.
ROLE_TASK_PERMS: dict[str, set[str]] = {
    "admin": set(PERMISSIONS),
    "author": {"view", "edit", "execute", "schedule"},
    "auditor": {"view"},
}


def has(user: User, grant: str) -> bool:
    return grant in ROLE_GRANTS.get(user.role, set())


def require(user: User, grant: str) -> None:
    if not has(user, grant):
        raise Forbidden(f"role '{user.role}' may not {grant.replace('.', ' ')}")


def policies_for(session: Session, user: User, task: Task) -> list[Policy]:
    return list(
        session.execute(
            select(Policy)
            .join(policy_users, policy_users.c.policy_id == Policy.id)
            .join(policy_tasks, policy_tasks.c.policy_id == Policy.id)
            .where(policy_users.c.user_id == user.id, policy_tasks.c.task_id == task.id)
            .order_by(Policy.id)
        ).scalars()
    )


def task_permissions(session: Session, user: User, task: Task) -> set[str]:
    perms = set(ROLE_TASK_PERMS.get(user.role, set()))
    for policy in policies_for(session, user, task):
        perms.update(policy.permissions or [])
    if perms & {"execute", "schedule", "edit"}:
        perms.add("view")
    return perms


def require_task(session: Session, user: User, task: Task, perm: str) -> None:
    if perm not in task_permissions(session, user, task):
        raise Forbidden(f"you may not {perm} task '{task.name}'")


def visible_task_ids(session: Session, user: User) -> set[int] | None:
    """Task ids the user may see; None means all of them."""
    if "view" in ROLE_TASK_PERMS.get(user.role, set()):
        return None
    rows = session.execute(
        select(policy_tasks.c.task_id)
        .join(policy_users, policy_users.c.policy_id == policy_tasks.c.policy_id)
        .where(policy_users.c.user_id == user.id)
    ).scalars()
    return set(rows)


@dataclass
class RunRules:
    """What a run of this task by this user needs before it may start."""

    requires_approval: bool = False
    requires_reason: bool = False
    approval_ttl_s: int = 86400
    approvers: dict[int, list[int]] = field(default_factory=dict)  # level -> user ids
    policy_ids: list[int] = field(default_factory=list)

    @property
    def levels(self) -> list[int]:
        return sorted(self.approvers)


def run_rules(session: Session, user: User, task: Task) -> RunRules:
    """The strictest combination of every policy that ties this user to this task."""
    rules = RunRules()
    ttls = []
    for policy in policies_for(session, user, task):
        rules.policy_ids.append(policy.id)
        rules.requires_reason |= policy.requires_reason
        if policy.requires_approval:
            rules.requires_approval = True
            ttls.append(policy.approval_ttl_s)
            for appr in policy.approvers:
                rules.approvers.setdefault(appr.level, [])
                if appr.user_id not in rules.approvers[appr.level]:
                    rules.approvers[appr.level].append(appr.user_id)
    if ttls:
        rules.approval_ttl_s = min(ttls)
    return rules
