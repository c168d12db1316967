"""``GET /api/v1/openapi.json``: an OpenAPI 3.1 description of every /api/v1 endpoint.

Paths come from ``app.url_map``, so a new route shows up without anyone editing this
file. Route modules add detail with ``@describe(...)`` and register their component
schemas with ``register_schema(name, schema)``; undescribed routes still appear, with
their docstring as the summary.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from flask import current_app, jsonify

from server.api import PUBLIC_ENDPOINTS, api_bp
from server.core.pagination import PAGE_SCHEMA, PER_PAGE_SCHEMA, TEXT_ARG_SCHEMA

SCHEMAS: dict[str, dict[str, Any]] = {}
_CONVERTER_TYPES = {"int": {"type": "integer"}, "float": {"type": "number"}}
_RULE_ARG = re.compile(r"<(?:(?P<conv>[a-z]+)(?:\([^)]*\))?:)?(?P<name>\w+)>")


def register_schema(name: str, schema: dict[str, Any]) -> None:
    """Add a component schema, referenced as ``{"$ref": "#/components/schemas/<name>"}``."""
    SCHEMAS[name] = schema


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def describe(*, request: str | None = None, response: str | None = None, status: int | None = None,
             paged: bool = False, query: dict[str, dict[str, Any]] | None = None,
             summary: str | None = None, body_optional: bool = False) -> Callable:
    """Attach OpenAPI detail to a view: request/response schema names, status, query args.

    ``paged`` wraps the response schema in the list envelope and adds ?page/?per_page.
    """

    def deco(fn: Callable) -> Callable:
        fn.__openapi__ = {"request": request, "response": response, "status": status, "paged": paged,
                          "query": query or {}, "summary": summary, "body_optional": body_optional}
        return fn

    return deco


def _operation(endpoint: str, method: str, view: Callable, params: list[dict[str, Any]]) -> dict[str, Any]:
    info = getattr(view, "__openapi__", {})
    doc = (view.__doc__ or "").strip()
    summary = info.get("summary") or (doc.splitlines()[0] if doc else endpoint.split(".", 1)[-1].replace("_", " "))
    op: dict[str, Any] = {"operationId": endpoint.split(".", 1)[-1], "summary": summary}
    if doc and "\n" in doc:
        op["description"] = doc
    parameters = list(params)
    if info.get("paged"):
        parameters += [
            {"name": "page", "in": "query", "schema": dict(PAGE_SCHEMA)},
            {"name": "per_page", "in": "query", "schema": dict(PER_PAGE_SCHEMA)},
        ]
    for name, schema in (info.get("query") or {}).items():
        if schema.get("type") == "string" and not schema.keys() & {"enum", "maxLength", "format"}:
            schema = {**TEXT_ARG_SCHEMA, **schema}  # free-text filters all go through pagination.text_arg
        parameters.append({"name": name, "in": "query", "schema": schema})
    if parameters:
        op["parameters"] = parameters
    if info.get("request"):
        # Every view reads its body with json_body(), which refuses a missing one unless the
        # view says otherwise (``body_optional``, where it calls json_body(required=False)).
        op["requestBody"] = {"required": not info.get("body_optional"),
                             "content": {"application/json": {"schema": ref(info["request"])}}}
    # A DELETE without a response body answers 204 (common.no_content), as each view does.
    status = str(info.get("status") or (204 if method == "DELETE" and not info.get("response") else 200))
    response: dict[str, Any] = {"description": "success"}
    if info.get("response"):
        schema = ref(info["response"])
        if info.get("paged"):
            schema = {"allOf": [ref("Page"), {"type": "object", "properties": {"items": {"type": "array",
                                                                                        "items": schema}}}]}
        response["content"] = {"application/json": {"schema": schema}}
    op["responses"] = {status: response, "4XX": {"description": "client error",
                                                 "content": {"application/json": {"schema": ref("Error")}}}}
    if endpoint in PUBLIC_ENDPOINTS:
        op["security"] = []
    op["tags"] = [(getattr(view, "__module__", "") or "api").rsplit(".", 1)[-1]]
    return op


def build_spec(app) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not rule.rule.startswith("/api/v1"):
            continue
        view = app.view_functions[rule.endpoint]
        params = [
            {"name": m.group("name"), "in": "path", "required": True,
             "schema": _CONVERTER_TYPES.get(m.group("conv") or "", {"type": "string"})}
            for m in _RULE_ARG.finditer(rule.rule)
        ]
        path = _RULE_ARG.sub(lambda m: "{" + m.group("name") + "}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(rule.endpoint, method, view, params)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Task Manager API", "version": "1",
                 "description": "Run privileged IT tasks over many servers. Errors are "
                                "{\"error\": {\"code\", \"message\", \"field\"}}."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"session": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "a token from POST /api/v1/auth/token or `flask users token`; its "
                                          "scopes: read (GET), execute, approve, admin (other writes)"},
                "session": {"type": "apiKey", "in": "cookie", "name": "session",
                            "description": "the web session; writes also need the X-CSRFToken header"},
            },
            "schemas": dict(sorted(SCHEMAS.items())),
        },
    }


@api_bp.get("/openapi.json")
@describe(summary="This document (OpenAPI 3.1)")
def openapi():
    """This document (OpenAPI 3.1)."""
    return jsonify(build_spec(current_app))


# --- shared component schemas -------------------------------------------------------------

_DT = {"type": ["string", "null"], "format": "date-time"}
_NAMES = {"type": "array", "items": {"type": "string"}}
_VARS = {"type": "object", "description": "Ansible variables: identifier keys, JSON values",
         "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"}}

register_schema("Error", {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"},
        "fields": {"type": "object", "additionalProperties": {"type": "string"},
                   "description": "every invalid field with its message"}}}},
})
register_schema("Page", {
    "type": "object", "required": ["items", "page", "per_page", "total"],
    "properties": {"items": {"type": "array"}, "page": {"type": "integer"}, "per_page": {"type": "integer"},
                   "total": {"type": "integer"}},
})
DATETIME, NAMES, VARS = _DT, _NAMES, _VARS
