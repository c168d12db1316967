"""The host page's "Test connection" button: a form to pick a credential, the result, and the
SSH host key recorded for the host (with "Forget host key" for editors)."""
from __future__ import annotations

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import select

from server.people import access
from server.core import db
from server.runs import hostkeys, protocols
from server.catalog.connections import test_host
from server.core.errors import ApiError
from server.core.models import Credential, Host
from server.web import web_bp
from server.guards import requires, visible_or_404


@web_bp.route("/hosts/<int:host_id>/test", methods=["GET", "POST"])
@login_required
@requires("hosts.view")
def host_test(host_id: int):
    host = _visible_host(host_id)
    can_login = access.has(current_user, "hosts.edit")
    proto = protocols.PROTOCOLS.get(host.protocol)
    kinds = proto.credential_kinds if proto else ()
    credentials = list(db.session.execute(
        select(Credential).where(Credential.kind.in_(kinds)).order_by(Credential.name)).scalars()) if can_login else []
    result, error, chosen = None, None, request.form.get("credential", "")
    status = 200
    if request.method == "POST":
        try:
            result = test_host(db.session(), current_user, host, chosen or None)
            db.session.commit()
        except ApiError as err:
            db.session.rollback()
            error, status = err.message, err.status
    known_keys = hostkeys.keys(current_app.config["TM"].instance_dir, host)
    return render_template("connections/test.html", host=host, protocol=proto, credentials=credentials,
                           can_login=can_login, result=result, error=error, chosen=chosen,
                           known_keys=known_keys, ssh_host=host.protocol in hostkeys.SSH_PROTOCOLS), status


@web_bp.post("/hosts/<int:host_id>/host-keys/forget")
@login_required
@requires("hosts.view")
def host_forget_keys(host_id: int):
    host = _visible_host(host_id)
    try:
        result = hostkeys.forget(db.session(), current_user, host, current_app.config["TM"].instance_dir)
        db.session.commit()
    except ApiError as err:
        db.session.rollback()
        if err.status == 403:
            abort(403)
        flash(err.message, "error")
    else:
        count = len(result["forgotten"])
        flash(f"Forgot {count} host key{'s' if count != 1 else ''} of {host.name}; the next connection learns "
              "the server's current key." if count else f"No host key was recorded for {host.name}.", "success")
    return redirect(url_for("web.host_test", host_id=host_id))


def _visible_host(host_id: int) -> Host:
    """The host, 404 if it does not exist, 403 if the user may not view it (``access.require_host``)."""
    host = visible_or_404(Host, host_id, "host")
    try:
        access.require_host(db.session(), current_user, host)
    except ApiError:
        abort(403)
    return host
