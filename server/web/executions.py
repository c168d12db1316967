"""Execution history (``web.executions``) and the live execution page (``web.execution``).

The live page polls ``web.execution_live`` (JSON) rather than holding a server-sent-event
stream open: a poll is a short request that any web worker answers, so hundreds of open
tabs do not pin hundreds of gunicorn threads. Each poll returns the header and only the
hosts that can still change (or changed since the previous poll), and for each running
step the page tails (``tail=<step>:<stdout offset>:<stderr offset>``) only the lines after
what it already has. Hosts come failures first: what needs the reader comes before what
went well.
"""
from __future__ import annotations

from datetime import timedelta

from flask import Response, abort, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.orm import joinedload, selectinload

from server.catalog import launch
from server.people import access
from server.core import db
from server.executions import relaunch
from server.reporting import operations_page, output, reports
from server.core.errors import ValidationError
from server.core.models import (
    EXECUTION_FINAL,
    EXECUTION_STATUSES,
    OPERATION_FAILED,
    OPERATION_FINAL,
    Execution,
    Operation,
    Step,
    Task,
    utcnow,
)
from server.guards import MAX_ID
from server.web import web_bp
from server.web.common import FormErrors, save
from server.web.forms import checkbox
from server.web.tasks import launch_form_values

OUTPUT_TAIL = 64 * 1024  # characters of output shown per host; the API has all of it
UNPAGED_HOSTS = 100  # an execution with more hosts than this is shown a page at a time
PAGE_HOSTS = 50  # hosts per page then (~2 kB of HTML each: the first screen stays near 100 kB)
HOST_ORDER = {"failed": 0, "unreachable": 1, "cancelled": 2, "running": 3, "pending": 4}
MAX_TAILS = 50  # running steps tailed per poll


def visible_tasks(session, user) -> list[tuple[int, str]]:
    stmt = select(Task.id, Task.name).order_by(Task.name)
    ids = access.visible_task_ids(session, user)
    if ids is not None:
        stmt = stmt.where(Task.id.in_(sorted(ids)))
    return [(r.id, r.name) for r in session.execute(stmt)]


@web_bp.get("/executions")
@login_required
def executions():
    s = db.session()
    error = None
    try:
        f = reports.parse_filters(s, current_user, request.args)
        before, after, limit = reports.parse_cursor(request.args)
        page = reports.execution_page(s, f, before, after, limit)
    except ValidationError as err:
        error, f, page = err, reports.Filters(), reports.Page([], None, None)
    return render_template(
        "executions/list.html",
        page=page,
        filters=f,
        args=dict(f.args),
        raw=request.args,
        error=error,
        tasks=visible_tasks(s, current_user),
        statuses=EXECUTION_STATUSES,
        triggers=reports.TRIGGERS,
    ), (422 if error else 200)


def _load(execution_id: int, with_operations: bool = True) -> Execution:
    stmt = (
        select(Execution)
        .options(joinedload(Execution.task), joinedload(Execution.requested_by))
        .where(Execution.id == execution_id)
    )
    if with_operations:
        stmt = stmt.options(selectinload(Execution.operations).selectinload(Operation.steps))
    ex = db.session.execute(stmt).scalar_one_or_none() if 0 < execution_id <= MAX_ID else None
    if ex is None or not access.can_view_execution(db.session(), current_user, ex):
        abort(404)  # like the API: whether an execution one may not see exists is not told
    return ex


def _summary(ex: Execution, statuses: list[str] | None = None) -> dict:
    counts: dict[str, int] = {}
    for status in statuses if statuses is not None else [op.status for op in ex.operations]:
        counts[status] = counts.get(status, 0) + 1
    done = sum(n for st, n in counts.items() if st in OPERATION_FINAL)
    total = ex.host_count or sum(counts.values())
    return {"counts": counts, "done": max(done, ex.hosts_done or 0), "total": total,
            "final": ex.status in EXECUTION_FINAL}


def _host_key(op: Operation) -> str:
    return f"{op.status}:{op.rc}:{len(op.steps)}:{len(op.stdout or '')}:{len(op.stderr or '')}"


def _ordered(ops: list[Operation]) -> list[Operation]:
    """Failed and unreachable hosts first, then running ones, succeeded last; by name within."""
    return sorted(ops, key=lambda op: (HOST_ORDER.get(op.status, len(HOST_ORDER)), op.host_name))


@web_bp.app_template_global("ansi_html")
def _ansi_html(text: str | None) -> Markup:
    """Command output as escaped HTML with its colours (the templates' only way to show it)."""
    return Markup(output.to_html(text))


web_bp.add_app_template_global(output.tail, "output_tail")


@web_bp.get("/executions/<int:execution_id>")
@login_required
def execution(execution_id: int):
    ex = _load(execution_id, with_operations=False)
    ops, summary, pager = _hosts_page(ex)
    perms = access.task_permissions(db.session(), current_user, ex.task) if ex.task else set()
    return render_template(
        "executions/detail.html",
        ex=ex,
        ops=ops,
        summary=summary,
        pager=pager,
        live_url=url_for("web.execution_live", execution_id=ex.id, page=pager["page"] if pager else None),
        failed_hosts=_failed_hosts(ex),
        can_run="execute" in perms,
        relaunch_form="execute" in perms and ex.status in EXECUTION_FINAL and _relaunch_asks(ex),
        tail=OUTPUT_TAIL,
        host_key=_host_key,
        now=utcnow(),
    )


def _relaunch_asks(ex: Execution) -> bool:
    """Whether a relaunch needs the form: secret values to give again, a required reason, or a
    required ticket the parent run did not have."""
    if launch.secret_names(ex.task.variables):
        return True
    rules = access.request_rules(db.session(), current_user, ex.task)
    return rules.requires_reason or (rules.requires_ticket and not ex.ticket)


def _failed_hosts(ex: Execution) -> list[str]:
    """Every failed or unreachable host's name, for "copy failed host names" (all pages)."""
    return list(db.session.execute(
        select(Operation.host_name).where(Operation.execution_id == ex.id,
                                          Operation.status.in_(OPERATION_FAILED)).order_by(Operation.host_name)
    ).scalars())


def _hosts_page(ex: Execution) -> tuple[list[Operation], dict, dict | None]:
    """The hosts the page shows: all of them, or for a big execution (or ``?page``/``?status``)
    one page of ``PAGE_HOSTS`` in name order, so its first screen stays small and fast."""
    args = {"ops_page": request.args.get("page", ""), "ops_status": request.args.get("status", "")}
    args = {k: v for k, v in args.items() if v}
    if not operations_page.wanted(args, ex, unpaged_max=UNPAGED_HOSTS):
        ops = list(db.session.execute(select(Operation).where(Operation.execution_id == ex.id)
                                      .options(selectinload(Operation.steps))).scalars())
        return _ordered(ops), _summary(ex, [op.status for op in ops]), None
    try:
        ops, pager = operations_page.operations_page(db.session(), ex, {**args, "ops_per_page": str(PAGE_HOSTS)})
    except ValidationError:
        abort(404)  # a page that does not exist
    if pager["page"] > pager["pages"]:
        abort(404)
    statuses = db.session.execute(select(Operation.status).where(Operation.execution_id == ex.id)).scalars().all()
    return ops, _summary(ex, list(statuses)), pager


@web_bp.get("/executions/<int:execution_id>/live")
@web_bp.get("/executions/<int:execution_id>/live/<int:page>")
@login_required
def execution_live(execution_id: int, page: int | None = None):
    """Polled by the execution page: status, progress, and the hosts that changed."""
    ex = _load(execution_id, with_operations=False)
    now = utcnow()
    since_raw = request.args.get("since", "").replace(" ", "+")  # an unencoded '+' arrives as a space
    try:
        since = reports.parse_when(since_raw, "since") - timedelta(seconds=3) if since_raw else None
    except ValidationError as err:
        return jsonify(err.to_dict()), err.status
    # A light query first (no output); then the full rows of only the hosts that may have changed.
    light = db.session.execute(
        select(Operation.id, Operation.status, Operation.started_at, Operation.finished_at)
        .where(Operation.execution_id == ex.id)
    ).all()
    if page is not None:  # a paged execution page: only its own hosts are sent
        on_page = set(db.session.execute(
            select(Operation.id).where(Operation.execution_id == ex.id).order_by(Operation.host_name)
            .offset((page - 1) * PAGE_HOSTS).limit(PAGE_HOSTS)).scalars())
    changed = [
        r.id for r in light
        if (page is None or r.id in on_page) and (
            since is None
            or r.status not in OPERATION_FINAL
            or (r.finished_at is not None and r.finished_at >= since)
            or (r.started_at is not None and r.started_at >= since))
    ]
    ops = db.session.execute(
        select(Operation).options(selectinload(Operation.steps)).where(Operation.id.in_(changed))
    ).scalars().all() if changed else []
    summary = _summary(ex, [r.status for r in light])
    hosts = [
        {
            "name": op.host_name,
            "key": _host_key(op),
            "html": render_template("executions/_host.html", op=op, tail=OUTPUT_TAIL, open_=None),
        }
        for op in _ordered(list(ops))
    ]
    return jsonify({
        "tails": _tails(ex, request.args.get("tail", "")),
        "id": ex.id,
        "status": ex.status,
        "final": summary["final"],
        "hosts_done": summary["done"],
        "host_count": summary["total"],
        "server_time": now.isoformat(),
        "summary_html": render_template("executions/_summary.html", ex=ex, summary=summary),
        "hosts": hosts,
    })


def _parse_tails(raw: str) -> dict[int, tuple[int, int]]:
    """``step:out:err,...`` from the page; malformed parts are ignored (it asks again)."""
    tails: dict[int, tuple[int, int]] = {}
    for part in raw.split(",")[:MAX_TAILS]:
        bits = part.split(":")
        if len(bits) == 3 and all(b.isdigit() and len(b) <= 10 for b in bits) and 0 < int(bits[0]) <= MAX_ID:
            tails[int(bits[0])] = (int(bits[1]), int(bits[2]))
    return tails


def _tails(ex: Execution, raw: str) -> list[dict]:
    """The new whole lines of the running steps the page tails (never what it already has)."""
    wanted = _parse_tails(raw)
    if not wanted:
        return []
    steps = db.session.execute(
        select(Step).join(Operation).where(Step.id.in_(list(wanted)), Operation.execution_id == ex.id)
    ).scalars().all()
    out = []
    for step in steps:
        running = step.status == "running"
        item: dict = {"step": step.id, "running": running}
        for stream, offset in zip(("stdout", "stderr"), wanted[step.id], strict=True):
            sl = output.slice_from(getattr(step, stream), offset, running=running)
            item[stream] = {"html": sl.html, "next_offset": sl.next_offset}
        out.append(item)
    return out


def _output_response(text: str | None, name: str) -> Response:
    """All of one output: as HTML for "show all", or as a text file without colour codes."""
    if request.args.get("download"):
        return Response(output.strip(text), mimetype="text/plain",
                        headers={"Content-Disposition": f'attachment; filename="{name}.txt"'})
    return Response(output.to_html(text), mimetype="text/html")


def _stream() -> str:
    stream = request.args.get("stream", "stdout")
    if stream not in ("stdout", "stderr"):
        abort(404)
    return stream


@web_bp.get("/executions/<int:execution_id>/steps/<int:step_id>/output")
@login_required
def step_output(execution_id: int, step_id: int):
    ex = _load(execution_id, with_operations=False)
    stream = _stream()
    step = db.session.execute(
        select(Step).join(Operation).where(Step.id == step_id, Operation.execution_id == ex.id)
    ).scalar_one_or_none() if 0 < step_id <= MAX_ID else None
    if step is None:
        abort(404)
    return _output_response(getattr(step, stream), f"execution-{ex.id}-step-{step.id}-{stream}")


@web_bp.get("/executions/<int:execution_id>/operations/<int:op_id>/output")
@login_required
def operation_output(execution_id: int, op_id: int):
    ex = _load(execution_id, with_operations=False)
    stream = _stream()
    op = db.session.get(Operation, op_id) if 0 < op_id <= MAX_ID else None
    if op is None or op.execution_id != ex.id:
        abort(404)
    return _output_response(getattr(op, stream), f"execution-{ex.id}-{op.host_name}-{stream}")


@web_bp.route("/executions/<int:execution_id>/relaunch", methods=["GET", "POST"])
@login_required
def execution_relaunch(execution_id: int):
    """The relaunch form, for a run the page's one-click relaunch cannot repeat alone: its task
    declares secret variables (erased when the run ended, so asked again here), or a reason or
    ticket is required. The other launch values and options are the parent's (``relaunch.relaunch``)."""
    ex = _load(execution_id, with_operations=False)
    s = db.session()
    relaunch.check_relaunchable(s, ex, current_user)
    failed_only = checkbox(request.values, "failed_only")
    errors = FormErrors()
    if request.method == "POST":
        form = request.form
        child, errors = save(lambda session: relaunch.relaunch(
            session, ex, current_user._get_current_object(), failed_only=failed_only,
            reason=form.get("reason", ""), ticket=form.get("ticket") or None,
            run_vars=launch_form_values(ex.task, form)))
        if not errors:
            flash(f"Execution #{child.id} {'is waiting for approval' if child.status == 'waiting_approval' else 'queued'}"
                  f" (relaunch of #{ex.id}).", "success")
            return redirect(url_for("web.execution", execution_id=child.id))
        ex = _load(execution_id, with_operations=False)  # the rollback expired it
    secret = launch.secret_names(ex.task.variables)
    return render_template(
        "executions/relaunch.html", ex=ex, failed_only=failed_only, errors=errors,
        secrets=[d for d in ex.task.variables or [] if d["name"] in secret],
        secret_keys=[f"vars.{name}" for name in secret],
        kept={k: v for k, v in (ex.vars or {}).items() if k not in secret},
        rules=access.request_rules(s, current_user, ex.task),
        form=request.form if request.method == "POST" else {"ticket": ex.ticket or ""},
    ), (errors.status if errors else 200)
