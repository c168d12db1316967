"""Pages for hosts, credentials and tasks."""
from __future__ import annotations

from flask import render_template
from flask_login import login_required

from . import web_bp


@web_bp.get("/tasks")
@login_required
def tasks():
    return render_template("base.html")


@web_bp.get("/hosts")
@login_required
def hosts():
    return render_template("base.html")


@web_bp.get("/credentials")
@login_required
def credentials():
    return render_template("base.html")
