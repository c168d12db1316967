"""The host page's "Test connection" button: a form to pick a credential, and the result."""
from __future__ import annotations

from flask import abort, render_template, request
from flask_login import current_user, login_required
from sqlalchemy import select

from .. import access, db, protocols
from ..connections import test_host
from ..errors import ApiError
from ..models import Credential, Host
from . import web_bp


@web_bp.route("/hosts/<int:host_id>/test", methods=["GET", "POST"])
@login_required
def host_test(host_id: int):
    if not access.has(current_user, "hosts.view"):
        abort(403)
    host = db.session.get(Host, host_id) if 0 < host_id <= 2**31 - 1 else None
    if host is None:
        abort(404)
    try:
        access.require_host(db.session(), current_user, host)
    except ApiError:
        abort(403)
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
    return render_template("connections/test.html", host=host, protocol=proto, credentials=credentials,
                           can_login=can_login, result=result, error=error, chosen=chosen), status
