"""GET /api/v1/openapi.json describes every /api/v1 route, with resolvable schema refs."""
from __future__ import annotations

import re

from server.api.openapi import SCHEMAS, register_schema


def _refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_every_api_rule_is_described(app):
    resp = app.test_client().get("/api/v1/openapi.json")  # public: no token needed
    assert resp.status_code == 200
    spec = resp.get_json()
    assert spec["openapi"].startswith("3.1")
    rules = [r for r in app.url_map.iter_rules() if r.rule.startswith("/api/v1")]
    assert len(rules) > 10
    for rule in rules:
        path = re.sub(r"<(?:[a-z]+(?:\([^)]*\))?:)?(\w+)>", r"{\1}", rule.rule)
        assert path in spec["paths"], path
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            op = spec["paths"][path][method.lower()]
            assert op["summary"] and op["responses"], (path, method)
            for name in re.findall(r"{(\w+)}", path):
                assert any(p["name"] == name and p["in"] == "path" for p in op["parameters"]), (path, name)


def test_core_resources_have_schemas_and_refs_resolve(app):
    spec = app.test_client().get("/api/v1/openapi.json").get_json()
    schemas = spec["components"]["schemas"]
    for name in ("Host", "HostInput", "Credential", "CredentialInput", "Task", "TaskInput", "Execution",
                 "ExecutionDetail", "Operation", "Step", "RunRequest", "Error"):
        assert name in schemas, name
    assert "secret" not in schemas["Credential"]["properties"]
    assert schemas["CredentialInput"]["properties"]["secret"]["writeOnly"] is True
    for ref in set(_refs(spec)):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    hosts = spec["paths"]["/api/v1/hosts"]
    assert hosts["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/HostInput"}
    assert "201" in hosts["post"]["responses"]
    assert {p["name"] for p in hosts["get"]["parameters"]} >= {"page", "per_page", "q", "group"}
    token = spec["paths"]["/api/v1/auth/token"]["post"]
    assert token["security"] == []  # public endpoints say so


def test_new_routes_and_schemas_show_up(app):
    register_schema("Widget", {"type": "object", "properties": {"id": {"type": "integer"}}})
    try:
        spec = app.test_client().get("/api/v1/openapi.json").get_json()
        assert "Widget" in spec["components"]["schemas"]
    finally:
        SCHEMAS.pop("Widget", None)
