"""Execution history and the live execution page."""
from __future__ import annotations

from flask import render_template
from flask_login import login_required

from . import web_bp


@web_bp.get("/executions")
@login_required
def executions():
    return render_template("base.html")
