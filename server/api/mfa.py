"""One's own second factor (``/api/v1/me/mfa/totp``) and the step-up check that re-asks for
it before approval decisions and credential edits (see ``people.stepup``)."""
from __future__ import annotations

from flask import g, jsonify, request

from server.api import api_bp, json_body, me
from server.api.openapi import describe, register_schema
from server.core import db
from server.core.errors import Conflict, ValidationError
from server.core.models import utcnow
from server.people import mfa, stepup, web_sessions
from server.people.auth import second_factor


@api_bp.before_request
def _step_up() -> None:
    """Runs after authentication: a sensitive write needs a recent second factor."""
    user = g.get("user")
    if user is None or request.url_rule is None or not stepup.sensitive(request.method, request.url_rule.rule):
        return
    s = db.session()
    token = g.get("api_token")
    last = token.mfa_at if token is not None else web_sessions.mfa_at(s)
    if not stepup.needed(s, user, last):
        return
    code = request.headers.get(stepup.HEADER)
    if not code:
        raise mfa.StepUpRequired(f"this action needs a second factor from the last "
                                 f"{mfa.policy(s)['reauth_minutes']} minutes: send a current code in the "
                                 f"{stepup.HEADER} header")
    when = second_factor(s, user, code)
    if token is None:
        web_sessions.mark_mfa(s, when)
    s.commit()


@api_bp.get("/me/mfa")
@describe(response="MfaState")
def mfa_state():
    """Whether your account uses TOTP, whether your role requires it, recovery codes left."""
    user = me()
    s = db.session()
    return jsonify({"totp": mfa.enrolled(user), "required": mfa.required_for(s, user),
                    "recovery_codes_left": len(user.recovery_codes or []) if mfa.enrolled(user) else 0,
                    "reauth_minutes": mfa.policy(s)["reauth_minutes"]})


@api_bp.post("/me/mfa/totp")
@describe(response="TotpEnrolment", status=201, body_optional=True)
def totp_begin():
    """Start TOTP enrolment: a new secret and its otpauth URI (and the QR code as SVG),
    not in force until confirmed with a code."""
    user = me()
    s = db.session()
    secret, uri = mfa.begin(s, user)
    s.commit()
    return jsonify({"secret": secret, "otpauth_uri": uri, "qr_svg": mfa.qr_svg(uri)}), 201


@api_bp.post("/me/mfa/totp/confirm")
@describe(request="OtpCode", response="RecoveryCodes")
def totp_confirm():
    """Confirm enrolment with a current code; the recovery codes are shown only here."""
    user = me()
    s = db.session()
    codes = mfa.confirm(s, user, json_body().get("code"))
    web_sessions.mark_mfa(s, utcnow())
    s.commit()
    return jsonify({"recovery_codes": codes})


@api_bp.delete("/me/mfa/totp")
@describe(request="OtpCode")
def totp_disable():
    """Turn TOTP off, with a current code or a recovery code. Refused while your role requires it."""
    user = me()
    s = db.session()
    if not mfa.enrolled(user):
        raise Conflict("TOTP is not enabled on your account")
    if mfa.required_for(s, user):
        raise ValidationError(f"role '{user.role}' must use a second factor; it cannot be turned off", field="code")
    mfa.disable(s, user, json_body().get("code"))
    s.commit()
    return "", 204


register_schema("MfaState", {"type": "object", "properties": {
    "totp": {"type": "boolean"}, "required": {"type": "boolean"}, "recovery_codes_left": {"type": "integer"},
    "reauth_minutes": {"type": "integer"}}})
register_schema("TotpEnrolment", {"type": "object", "properties": {
    "secret": {"type": "string"}, "otpauth_uri": {"type": "string"},
    "qr_svg": {"type": "string", "description": "the URI as an SVG QR code, rendered by the server"}}})
register_schema("OtpCode", {"type": "object", "required": ["code"], "properties": {"code": {"type": "string"}}})
register_schema("RecoveryCodes", {"type": "object", "properties": {
    "recovery_codes": {"type": "array", "items": {"type": "string"}, "description": "shown once"}}})
