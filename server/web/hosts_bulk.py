"""The bulk hosts page: paste or upload an Ansible inventory (INI/YAML) or a CSV file, see
what would be written (hosts, groups, skipped variables and why, errors with their line),
then import it. Nothing is written before the Import button, and not at all while the
preview shows an error."""
from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from server.catalog.hosts import require_local_rights
from server.core import db
from server.core.errors import ApiError
from server.guards import requires
from server.runs import bulk_inventory, inventory
from server.web import web_bp


def _submitted_text() -> str:
    upload = request.files.get("file")
    if upload is not None and upload.filename:
        raw = upload.read(bulk_inventory.MAX_TEXT + 1)
        return raw.decode("utf-8", errors="replace")
    return request.form.get("inventory", "")


@web_bp.route("/hosts/bulk", methods=["GET", "POST"])
@login_required
@requires("hosts.edit")
def hosts_bulk():
    if request.method == "GET":
        return render_template("hosts/bulk.html", text="", fmt="auto", plan=None, used=None, error=None)
    text, fmt = _submitted_text(), request.form.get("format", "auto")
    try:
        used, plan = bulk_inventory.plan_text(text, fmt)
        if any(h["protocol"] == "local" for h in plan.hosts.values()):
            require_local_rights(db.session(), current_user.username, "local")
    except ApiError as err:
        db.session.rollback()
        return render_template("hosts/bulk.html", text=text, fmt=fmt, plan=None, used=None, error=err.message), \
            err.status
    if request.form.get("action") != "import" or plan.errors:
        db.session.rollback()
        return render_template("hosts/bulk.html", text=text, fmt=fmt, plan=plan, used=used, error=None), \
            422 if plan.errors and request.form.get("action") == "import" else 200
    try:
        result = inventory.apply_plan(db.session(), plan, current_user.username, source=f"web ({used})")
        db.session.commit()
    except ApiError as err:
        db.session.rollback()
        return render_template("hosts/bulk.html", text=text, fmt=fmt, plan=plan, used=used, error=err.message), \
            err.status
    flash(f"Imported {result['hosts']} hosts and {result['groups']} groups"
          + (f"; {len(result['skipped'])} variables skipped" if result["skipped"] else "") + ".", "success")
    return redirect(url_for("web.hosts"))
