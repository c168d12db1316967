"""The API = its OpenAPI document: schemathesis, in-process against the app, bounded and seeded.

Every operation of ``/api/v1/openapi.json`` gets a few seeded positive and negative cases;
any 5xx, undocumented status or content type (HTML error pages), response that breaks its
schema, or request the spec forbids but the server accepts fails the test. Requests the spec
allows must also be accepted, except where acceptance depends on what is stored or on
syntax JSON Schema cannot express (``SEMANTIC`` says why): a new limit or enum the spec
does not carry fails here. ``TM_FUZZ_EXAMPLES`` raises the bound for a longer local run.
"""
from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import positive_data_acceptance

# Nothing here depends on the database kind: the SQLite run covers it (tests/run.sh).
pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("TM_FUZZ_EXAMPLES", "4"))
ONLY = os.environ.get("TM_FUZZ_ONLY", "")  # a label prefix, to fuzz one operation longer
SEED = 18

# Operations whose valid-looking input can still be refused with a 422 that names the reason.
SEMANTIC = {
    "names of stored rows (users, tasks, hosts, credentials) and their rules": (
        "GET /api/v1/tokens", "POST /api/v1/tasks", "POST /api/v1/policies", "POST /api/v1/hosts",
        "POST /api/v1/credentials", "POST /api/v1/users", "GET /api/v1/reports/executions.csv",
        "GET /api/v1/reports/operations.csv", "GET /api/v1/executions", "GET /api/v1/approvals",
    ),
    "cron syntax, IANA zones, ISO dates, Apprise URLs, e-mail addresses": (
        "GET /api/v1/schedules/preview", "POST /api/v1/blackouts", "POST /api/v1/notifications",
    ),
    "a group's children must name stored groups": ("POST /api/v1/groups",),
    "a wrong password is a 401 the spec cannot predict": ("POST /api/v1/auth/token",),
    "git URLs and branch names by git's own rules": ("POST /api/v1/projects",),
    "directory settings: LDAP/OIDC URLs, DNs and credential names checked as a sign-in uses them; "
    "a test needs LDAP configured first": (
        "PUT /api/v1/settings/ldap", "POST /api/v1/settings/ldap/test", "PUT /api/v1/settings/oidc",
        "PUT /api/v1/settings/mfa",
    ),
}
_SEMANTIC = {label for labels in SEMANTIC.values() for label in labels}


def _failures(schema, headers) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for result in schema.get_all_operations():
        op = result.ok()
        if not op.label.startswith(ONLY):
            continue
        excluded = [positive_data_acceptance] if op.label in _SEMANTIC else []
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case):
                try:
                    case.call_and_validate(headers=headers, excluded_checks=excluded)  # noqa: B023 (run is called within this iteration)
                except (FailureGroup, Failure) as exc:
                    found.setdefault(f"{op.label} ({mode.value})", set()).add(  # noqa: B023
                        " ".join(str(exc).split())[:400])

            try:
                run()
            except Unsatisfiable:
                pass
    return found


@pytest.mark.timeout(300)
def test_the_api_does_what_its_openapi_says(app, api):
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    found = _failures(schema, {"Authorization": f"Bearer {api.token}"})
    report = "\n".join(f"{label}:\n  " + "\n  ".join(sorted(msgs)) for label, msgs in sorted(found.items()))
    assert not found, report


def test_json_errors_everywhere_under_api(app, api):
    client = app.test_client()
    auth = {"Authorization": f"Bearer {api.token}"}
    for path, method, status in (("/api/v1/hosts/abc", "GET", 404), ("/api/v1/policies/1.5", "DELETE", 404),
                                 ("/api/v1/no-such-thing", "GET", 404), ("/api/v1/hosts", "PUT", 405)):
        resp = client.open(path, method=method, headers=auth)
        assert (resp.status_code, resp.mimetype) == (status, "application/json"), path
        assert resp.get_json()["error"]["code"]
    assert client.get("/hosts/abc").mimetype == "text/html"  # pages keep their HTML errors
