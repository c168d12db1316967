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

# Operations whose schema-valid input can still be refused with a 422 naming the reason, and
# why no JSON Schema can say it (the spec still carries every limit, enum and pattern it can).
SEMANTIC = {
    "GET /api/v1/tokens": "?user must name a stored user",
    "GET /api/v1/reports/executions.csv": "?task and ?host must name stored rows",
    "GET /api/v1/reports/operations.csv": "?task and ?host must name stored rows",
    "POST /api/v1/tasks": "hosts, groups, credentials and project must name stored rows",
    "POST /api/v1/policies": "users, tasks and approvers must name stored users and tasks",
    "PATCH /api/v1/policies/{policy_id}": "the same names, once a fuzzed POST stored a policy",
    "POST /api/v1/credentials": "an ssh_key or certificate secret must parse as a key",
    "POST /api/v1/hosts": "no NUL character anywhere inside vars (a rule on nested values)",
    "POST /api/v1/groups": "children must name stored groups",
    "PATCH /api/v1/groups/{group_id}": "the same names, once a fuzzed POST stored a group",
    "POST /api/v1/blackouts": "starts_at and ends_at must parse as ISO 8601, ends_at after starts_at",
    "POST /api/v1/notifications": "the url must be one an Apprise plugin parses",
    "POST /api/v1/projects": "URL rules by kind (no user in https, absolute file paths, file:// for admins) "
                             "and a stored credential of the URL's kind",
    "GET /api/v1/schedules/preview": "cron syntax",
    "PUT /api/v1/settings/ldap": "URL, CA bundle file and bind credential are checked as a sign-in uses them",
    "PUT /api/v1/settings/oidc": "issuer URL rules and the client credential must be a stored one",
    "POST /api/v1/settings/ldap/test": "needs LDAP configured first",
}
_SEMANTIC = set(SEMANTIC)


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
