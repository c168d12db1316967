#!/usr/bin/env bash
# The whole suite: every test on SQLite, then the database-facing tests on PostgreSQL.
# Uses the Redis on 127.0.0.1:6379 and the PostgreSQL on 127.0.0.1:5432 when they answer
# (trust auth); otherwise starts private ones under /tmp for the run and stops them after.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p test-output
private=$(mktemp -d /tmp/tm-test-services.XXXXXX)
chmod 755 "$private"
cleanup() {
  [ -f "$private/redis.pid" ] && kill "$(cat "$private/redis.pid")" 2>/dev/null
  if [ -d "$private/pg" ]; then runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$private/pg" -m fast stop >/dev/null 2>&1; fi
  rm -rf "$private"
}
trap cleanup EXIT

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6390 --save "" --appendonly no \
    --dir "$private" --pidfile "$private/redis.pid" --logfile "$private/redis.log"
  export TM_TEST_REDIS_URL=redis://127.0.0.1:6390
  for i in $(seq 50); do redis-cli -p 6390 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

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
