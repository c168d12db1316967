"""Who may do what: roles for resources, access policies for tasks.

Roles: ``admin`` (everything), ``author`` (hosts, credentials, tasks), ``operator``
(runs what policies grant), ``approver`` (decides requests), ``auditor`` (read-only:
executions, reports, audit). Task permissions come from the role plus every policy that
names the user; a policy's approvers may *view* its tasks (they must see what they decide).

Visibility follows tasks: a user who may not see every task sees only the executions of
the tasks they can view (plus their own requests) and only the hosts those tasks target.
List endpoints call ``filter_tasks`` / ``filter_hosts`` / ``filter_executions``; detail
endpoints call ``require_task`` / ``require_host`` / ``require_execution``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, false, or_, select, union
from sqlalchemy.orm import Session

from server.core.errors import Forbidden
from server.core.models import (
    PERMISSIONS,
    Execution,
    Host,
    group_children,
    Policy,
    PolicyApprover,
    Schedule,
    Task,
    User,
    host_groups,
    policy_tasks,
    policy_users,
    task_groups,
    task_hosts,
)

# Role -> resource actions it holds regardless of policies.
ROLE_GRANTS: dict[str, set[str]] = {
    "admin": {"hosts.view", "hosts.edit", "credentials.view", "credentials.edit", "tasks.create", "users.manage",
              "projects.edit",
              "policies.manage", "notifications.manage", "audit.view", "reports.view", "schedules.admin", "rq.view"},
    "author": {"hosts.view", "hosts.edit", "credentials.view", "credentials.edit", "tasks.create", "reports.view",
               "projects.edit"},
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


def sees_all_tasks(user: User) -> bool:
    return "view" in ROLE_TASK_PERMS.get(user.role, set())


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


def _approves_task(session: Session, user: User, task_id: int) -> bool:
    return session.execute(
        select(PolicyApprover.id)
        .join(policy_tasks, policy_tasks.c.policy_id == PolicyApprover.policy_id)
        .where(PolicyApprover.user_id == user.id, policy_tasks.c.task_id == task_id)
        .limit(1)
    ).first() is not None


def task_permissions(session: Session, user: User, task: Task) -> set[str]:
    perms = set(ROLE_TASK_PERMS.get(user.role, set()))
    for policy in policies_for(session, user, task):
        perms.update(policy.permissions or [])
    if perms & {"execute", "schedule", "edit"}:
        perms.add("view")
    if "view" not in perms and _approves_task(session, user, task.id):
        perms.add("view")
    return perms


def require_task(session: Session, user: User, task: Task, perm: str) -> None:
    if perm not in task_permissions(session, user, task):
        raise Forbidden(f"you may not {perm} task '{task.name}'")


def _visible_task_ids_query(user: User) -> Select:
    as_user = (
        select(policy_tasks.c.task_id)
        .join(policy_users, policy_users.c.policy_id == policy_tasks.c.policy_id)
        .where(policy_users.c.user_id == user.id)
    )
    as_approver = (
        select(policy_tasks.c.task_id)
        .join(PolicyApprover, PolicyApprover.policy_id == policy_tasks.c.policy_id)
        .where(PolicyApprover.user_id == user.id)
    )
    return select(union(as_user, as_approver).subquery().c.task_id)


def visible_task_ids(session: Session, user: User) -> set[int] | None:
    """Task ids the user may see; None means all of them."""
    if sees_all_tasks(user):
        return None
    return set(session.execute(_visible_task_ids_query(user)).scalars())


def visible_host_ids(session: Session, user: User) -> set[int] | None:
    """Host ids the user may see; None means all. Operators and approvers see the hosts
    their visible tasks target, directly or through a group or a group below it."""
    if user.role in ("admin", "author", "auditor"):
        return None
    task_ids = visible_task_ids(session, user)
    if task_ids is None:
        return None
    if not task_ids:
        return set()
    return task_targets(session, task_ids)[0]


def task_targets(session: Session, task_ids: set[int]) -> tuple[set[int], set[int]]:
    """(host ids, group ids) the tasks reach: their hosts, their groups and every group below
    those, and the hosts of all these groups (as Ansible's ``hosts: <group>`` does)."""
    group_ids = subtree_ids(session, set(session.execute(
        select(task_groups.c.group_id).where(task_groups.c.task_id.in_(task_ids))).scalars()))
    direct = select(task_hosts.c.host_id).where(task_hosts.c.task_id.in_(task_ids))
    via_groups = select(host_groups.c.host_id).where(host_groups.c.group_id.in_(group_ids))
    return set(session.execute(union(direct, via_groups)).scalars()), group_ids


def subtree_ids(session: Session, group_ids: set[int]) -> set[int]:
    """``group_ids`` and the ids of every group below them (the tree's edges are few: one read)."""
    below: dict[int, list[int]] = {}
    for parent, child in session.execute(select(group_children.c.parent_id, group_children.c.child_id)):
        below.setdefault(parent, []).append(child)
    found: set[int] = set()
    todo = list(group_ids)
    while todo:
        gid = todo.pop()
        if gid not in found:
            found.add(gid)
            todo.extend(below.get(gid, ()))
    return found


def visible_group_ids(session: Session, user: User) -> set[int] | None:
    """Group ids the user may see; None means all. Whoever sees only some hosts sees the
    groups his visible tasks target and the groups of the hosts he sees."""
    if user.role in ("admin", "author", "auditor"):
        return None
    task_ids = visible_task_ids(session, user)
    if task_ids is None:
        return None
    host_ids, targeted = task_targets(session, task_ids)
    holding = select(host_groups.c.group_id).where(host_groups.c.host_id.in_(host_ids))
    return targeted | set(session.execute(holding).scalars())


def _session(session: Session | None) -> Session:
    if session is not None:
        return session
    from server.core import db

    return db.session()


def filter_tasks(query: Select, user: User, session: Session | None = None) -> Select:
    """Restrict a ``select(Task)`` (or any query with Task in FROM) to the visible tasks."""
    ids = visible_task_ids(_session(session), user)
    return query if ids is None else query.where(Task.id.in_(ids) if ids else false())


def filter_hosts(query: Select, user: User, session: Session | None = None) -> Select:
    ids = visible_host_ids(_session(session), user)
    return query if ids is None else query.where(Host.id.in_(ids) if ids else false())


def filter_executions(query: Select, user: User, session: Session | None = None) -> Select:
    """Restrict a ``select(Execution)`` to executions of visible tasks plus the user's own requests."""
    ids = visible_task_ids(_session(session), user)
    if ids is None:
        return query
    own = Execution.requested_by_id == user.id
    return query.where(or_(Execution.task_id.in_(ids), own) if ids else own)


def filter_by_task(query: Select, task_column: Any, user: User, session: Session | None = None) -> Select:
    """Generic form for rows that hang off a task (schedules, reports): ``filter_by_task(q, Schedule.task_id, user)``."""
    ids = visible_task_ids(_session(session), user)
    return query if ids is None else query.where(task_column.in_(ids) if ids else false())


def can_view_execution(session: Session, user: User, ex: Execution) -> bool:
    if sees_all_tasks(user) or ex.requested_by_id == user.id:
        return True
    return "view" in task_permissions(session, user, ex.task)


def require_execution(session: Session, user: User, ex: Execution) -> None:
    if not can_view_execution(session, user, ex):
        raise Forbidden(f"you may not view execution {ex.id}")


def can_view_host(session: Session, user: User, host: Host) -> bool:
    ids = visible_host_ids(session, user)
    return ids is None or host.id in ids


def require_host(session: Session, user: User, host: Host) -> None:
    if not can_view_host(session, user, host):
        raise Forbidden(f"you may not view host '{host.name}'")


@dataclass
class RunRules:
    """What a run of this task by this user needs before it may start."""

    requires_approval: bool = False
    requires_reason: bool = False
    approval_ttl_s: int = 86400
    approvers: dict[int, list[int]] = field(default_factory=dict)  # level -> user ids
    policy_ids: list[int] = field(default_factory=list)
    requires_ticket: bool = False
    ticket_patterns: list[str] = field(default_factory=list)  # a ticket must match each
    reasons: list[str] | None = None  # None: any reason; else only these (every policy's list allows it)

    @property
    def levels(self) -> list[int]:
        return sorted(self.approvers)


def _combine(policies: list[Policy]) -> RunRules:
    rules = RunRules()
    ttls = []
    for policy in policies:
        rules.policy_ids.append(policy.id)
        _launch_rules(rules, policy)
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


def _launch_rules(rules: RunRules, policy: Policy) -> None:
    """Reason, ticket and curated reasons: every policy's demand adds up."""
    rules.requires_reason |= policy.requires_reason
    rules.requires_ticket |= bool(policy.requires_ticket)
    if policy.ticket_pattern and policy.ticket_pattern not in rules.ticket_patterns:
        rules.ticket_patterns.append(policy.ticket_pattern)
    if policy.reasons:
        rules.reasons = [r for r in (rules.reasons if rules.reasons is not None else policy.reasons)
                         if r in policy.reasons]


def run_rules(session: Session, user: User, task: Task) -> RunRules:
    """The strictest combination of every policy that ties this user to this task."""
    return _combine(policies_for(session, user, task))


def task_approval_rules(session: Session, task: Task) -> RunRules:
    """The strictest combination of every approval-requiring policy on the task, whoever it names.

    Approval belongs to the task: these rules apply to every request (``request_rules``)
    and to schedules, whose runs have no requesting user."""
    policies = session.execute(
        select(Policy)
        .join(policy_tasks, policy_tasks.c.policy_id == Policy.id)
        .where(policy_tasks.c.task_id == task.id, Policy.requires_approval.is_(True))
        .order_by(Policy.id)
    ).scalars().all()
    return _combine(list(policies))


def request_rules(session: Session, user: User, task: Task) -> RunRules:
    """What a run of ``task`` requested by ``user`` needs before it may start.

    Approval belongs to the task, not to the requester: every policy that puts the task under
    approval applies to everyone, admins and authors included (otherwise anyone left out of
    the policy, or added to a second one without approval, could run around it). Its approvers
    come from those policies. A reason is needed when one of them, or a policy naming the
    user, asks for one."""
    rules = task_approval_rules(session, task)
    for policy in policies_for(session, user, task):
        _launch_rules(rules, policy)
    return rules


# What a schedule's owner must still hold on its task when it fires.
SCHEDULE_OWNER_PERMS = ("execute", "schedule")


def schedule_owner_problems(session: Session, schedules: list[Schedule]) -> dict[int, str]:
    """Schedule id -> why its owner may no longer run it, for a batch of schedules.

    A schedule acts with its creator's rights, checked again at every fire: the owner must
    still exist, be active and hold ``execute`` and ``schedule`` on the task (through the role
    or a policy). Two queries for the whole batch. Schedules without an owner (made by the
    system, not through the API or the pages) are not checked."""
    owned = [s for s in schedules if s.created_by_id is not None]
    if not owned:
        return {}
    owner_ids = {s.created_by_id for s in owned}
    users = {u.id: u for u in session.execute(  # fresh rows: the scheduler's session lives long
        select(User).where(User.id.in_(owner_ids)).execution_options(populate_existing=True)).scalars()}
    granted: dict[tuple[int, int], set[str]] = {}
    rows = session.execute(
        select(policy_users.c.user_id, policy_tasks.c.task_id, Policy.permissions)
        .join(policy_tasks, policy_tasks.c.policy_id == policy_users.c.policy_id)
        .join(Policy, Policy.id == policy_users.c.policy_id)
        .where(policy_users.c.user_id.in_(owner_ids), policy_tasks.c.task_id.in_({s.task_id for s in owned}))
    )
    for user_id, task_id, perms in rows:
        granted.setdefault((user_id, task_id), set()).update(perms or [])
    problems: dict[int, str] = {}
    for s in owned:
        user = users.get(s.created_by_id)
        task_name = s.task.name if s.task is not None else str(s.task_id)
        if user is None:
            problems[s.id] = f"the schedule's owner (user {s.created_by_id}) no longer exists"
            continue
        if not user.is_active:
            problems[s.id] = f"the schedule's owner '{user.username}' is disabled"
            continue
        perms = ROLE_TASK_PERMS.get(user.role, set()) | granted.get((user.id, s.task_id), set())
        missing = [p for p in SCHEDULE_OWNER_PERMS if p not in perms]
        if missing:
            problems[s.id] = (f"the schedule's owner '{user.username}' ({user.role}) may no longer "
                              f"{' or '.join(missing)} task '{task_name}'")
    return problems


# ---------------------------------------------------------------- what a task may point at

LOCAL_PROTOCOL = "local"


def may_target_local(user: User) -> bool:
    """Only admins may make a task run on the Task Manager server itself (protocol ``local``)."""
    return user.role == "admin"


@dataclass
class Usable:
    """The hosts, groups and credentials a user may point a task at; None means all of them.
    Vault passwords apart: the vault credential of a task he may execute is his to name as a
    vault credential only (as a login it would hand the password to whatever host he targets)."""

    host_ids: set[int] | None = None
    group_ids: set[int] | None = None
    credential_ids: set[int] | None = None
    vault_ids: set[int] | None = None

    def host(self, host_id: int) -> bool:
        return self.host_ids is None or host_id in self.host_ids

    def group(self, group_id: int) -> bool:
        return self.group_ids is None or group_id in self.group_ids

    def credential(self, credential_id: int) -> bool:
        return self.credential_ids is None or credential_id in self.credential_ids

    def vault(self, credential_id: int) -> bool:
        return self.vault_ids is None or credential_id in self.vault_ids


def executable_task_ids(session: Session, user: User) -> set[int] | None:
    """Ids of the tasks ``user`` may execute; None means all of them (by role)."""
    if "execute" in ROLE_TASK_PERMS.get(user.role, set()):
        return None
    rows = session.execute(
        select(policy_tasks.c.task_id, Policy.permissions)
        .join(Policy, Policy.id == policy_tasks.c.policy_id)
        .join(policy_users, policy_users.c.policy_id == Policy.id)
        .where(policy_users.c.user_id == user.id)
    )
    return {task_id for task_id, perms in rows if "execute" in (perms or [])}


def usable_targets(session: Session, user: User) -> Usable:
    """What ``user`` may point a task at (creating or editing it).

    The roles that manage hosts, credentials and tasks (admin, author) may use all of them
    (``local`` hosts aside, see ``may_target_local``). Anyone else - an operator given ``edit``
    on a task by a policy - only the hosts, groups and credentials of tasks he may already
    execute: editing a task never lets him run something on a machine, or as an account,
    he could not run on himself."""
    if has(user, "hosts.edit") and has(user, "credentials.edit"):
        return Usable()
    ids = executable_task_ids(session, user)
    if ids is None:
        return Usable()
    if not ids:
        return Usable(set(), set(), set(), set())
    host_ids, group_ids = task_targets(session, ids)
    creds = select(Task.credential_id).where(Task.id.in_(ids), Task.credential_id.is_not(None))
    vaults = select(Task.vault_credential_id).where(Task.id.in_(ids), Task.vault_credential_id.is_not(None))
    return Usable(host_ids, group_ids, set(session.execute(creds).scalars()), set(session.execute(vaults).scalars()))


def visible_credential_ids(session: Session, user: User) -> set[int] | None:
    """Credentials whose name ``user`` may know: all for roles that list credentials, else
    those of the tasks he may view."""
    if has(user, "credentials.view"):
        return None
    ids = visible_task_ids(session, user)
    if ids is None:
        return None
    if not ids:
        return set()
    return set(session.execute(union(
        select(Task.credential_id).where(Task.id.in_(ids), Task.credential_id.is_not(None)),
        select(Task.vault_credential_id).where(Task.id.in_(ids), Task.vault_credential_id.is_not(None)),
    )).scalars())


def tasks_under_approval(session: Session, task_ids: set[int]) -> set[int]:
    """Which of ``task_ids`` an approval-requiring policy covers (one query for a batch)."""
    if not task_ids:
        return set()
    return set(session.execute(
        select(policy_tasks.c.task_id)
        .join(Policy, Policy.id == policy_tasks.c.policy_id)
        .where(policy_tasks.c.task_id.in_(task_ids), Policy.requires_approval.is_(True))
    ).scalars())
