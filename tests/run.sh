#!/usr/bin/env bash
# The whole suite: ruff, then mypy (on the packages pyproject.toml names), any finding of
# either failing the run before a test starts; then every test on SQLite, then the
# database-facing tests on PostgreSQL.
# Redis needs nothing here: each pytest process starts its own redis-server (tests/conftest.py).
# Uses the PostgreSQL on 127.0.0.1:5432 when it answers (trust auth); otherwise starts a
# private one under /tmp for the run and stops it after.
set -uo pipefail
cd "$(dirname "$0")/.."

echo "== ruff =="
.venv/bin/ruff check . || { echo "ruff: fix the findings above (many with \`.venv/bin/ruff check --fix .\`)"; exit 1; }
echo "== mypy =="
.venv/bin/mypy || { echo "mypy: fix the findings above (server/core, server/executions, server/runs)"; exit 1; }

mkdir -p test-output
private=$(mktemp -d /tmp/tm-test-services.XXXXXX)
chmod 755 "$private"
cleanup() {
  if [ -d "$private/pg" ]; then runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$private/pg" -m fast stop >/dev/null 2>&1; fi
  rm -rf "$private"
}
trap cleanup EXIT

if ! psql -h 127.0.0.1 -p 5432 -U postgres -d test -Atc 'select 1' >/dev/null 2>&1; then
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  install -d -o postgres "$private/pg"
  runuser -u postgres -- "$PG_BIN/initdb" -D "$private/pg" -A trust -U postgres >/dev/null
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$private/pg" -l "$private/pg.log" \
    -o "-p 5433 -k $private -c listen_addresses=127.0.0.1" -w start >/dev/null
  export TM_TEST_PG_URL=postgresql://postgres@127.0.0.1:5433/postgres
fi

status=0
echo "== SQLite =="
TM_TEST_DB=sqlite .venv/bin/pytest -q -p no:cacheprovider -n 2 "$@" || status=$?
echo "== PostgreSQL =="
TM_TEST_DB=postgresql .venv/bin/pytest -q -p no:cacheprovider -n 2 -m "not sqlite_only and not browser and not slow" "$@" || status=$?
exit $status
