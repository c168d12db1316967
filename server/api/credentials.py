"""Credentials: ``/api/v1/credentials``. Secrets are write-only."""
from __future__ import annotations

from flask import jsonify, request
from sqlalchemy import select

from server.core import db
from server.catalog.credentials import (
    CREDENTIAL_CHECKS,
    create_credential,
    delete_credential,
    public,
    update_credential,
)
from server.core.models import Credential
from server.core.pagination import like_pattern, text_arg
from server.core.validation import schema_of
from server.api import api_bp, json_body, me
from server.api.common import no_content, page_of
from server.guards import requires, visible_or_404
from server.api.openapi import DATETIME, describe, register_schema


@api_bp.get("/credentials")
@describe(response="Credential", paged=True, query={"q": {"type": "string"}, "kind": {"type": "string"}})
@requires("credentials.view")
def list_credentials():
    """List credentials by name (never their secrets)."""
    query = select(Credential).order_by(Credential.name)
    term = text_arg(request.args, "q")
    if term:
        query = query.where(Credential.name.ilike(like_pattern(term), escape="\\"))
    kind = text_arg(request.args, "kind")
    if kind:
        query = query.where(Credential.kind == kind)
    page = page_of(query)
    return jsonify(page.envelope([public(c) for c in page.items]))


@api_bp.post("/credentials")
@describe(request="CredentialInput", response="Credential", status=201)
@requires("credentials.edit")
def create_credential_view():
    """Store a credential; ``secret`` is encrypted and never returned."""
    user = me()
    cred = create_credential(db.session(), json_body(), actor=user.username)
    db.session.commit()
    return jsonify(public(cred)), 201


@api_bp.get("/credentials/<int:credential_id>")
@describe(response="Credential")
@requires("credentials.view")
def get_credential(credential_id: int):
    """One credential (never its secrets)."""
    return jsonify(public(visible_or_404(Credential, credential_id, "credential")))


@api_bp.patch("/credentials/<int:credential_id>")
@describe(request="CredentialInput", response="Credential")
@requires("credentials.edit")
def update_credential_view(credential_id: int):
    """Change a credential; omit ``secret`` to keep it, ``become_password: null`` clears that."""
    user = me()
    cred = visible_or_404(Credential, credential_id, "credential")
    update_credential(db.session(), cred, json_body(), actor=user.username)
    db.session.commit()
    return jsonify(public(cred))


@api_bp.delete("/credentials/<int:credential_id>")
@describe(status=204)
@requires("credentials.edit")
def delete_credential_view(credential_id: int):
    """Delete a credential no task uses (409 names the tasks that do)."""
    user = me()
    delete_credential(db.session(), visible_or_404(Credential, credential_id, "credential"), actor=user.username)
    db.session.commit()
    return no_content()


_COMMON = {name: schema_of(CREDENTIAL_CHECKS[name])  # generated from the checks (catalog.credentials)
           for name in ("name", "kind", "username", "become_method", "become_user", "options")}
register_schema("Credential", {"type": "object", "properties": {
    "id": {"type": "integer"}, **_COMMON,
    "has_secret": {"type": "boolean"}, "has_become_password": {"type": "boolean"},
    "version": {"type": "integer", "description": "bumped whenever how it logs in changes"},
    "created_at": DATETIME, "updated_at": DATETIME}})
register_schema("CredentialInput", {
    "type": "object", "additionalProperties": False, "required": ["name", "kind", "secret"],
    "description": "POST needs name, kind and secret; PATCH takes any subset (changing kind needs a new secret)",
    "properties": {**_COMMON,
                   "secret": schema_of(CREDENTIAL_CHECKS["secret"], writeOnly=True,
                                       description="private key (ssh_key, unencrypted OpenSSH or PEM), password "
                                                   "or token (one line); not blank, no NUL character"),
                   "become_password": schema_of(CREDENTIAL_CHECKS["become_password"], writeOnly=True)}})
