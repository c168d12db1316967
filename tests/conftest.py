"""Shared fixtures: a fresh app per test on SQLite or PostgreSQL, real Redis, API helpers.

Select the database with ``TM_TEST_DB=sqlite`` (default) or ``TM_TEST_DB=postgresql``
(uses ``TM_TEST_PG_URL``, default ``postgresql://postgres@127.0.0.1:5432/test``, in a
private database created for the session). Redis is always a redis-server private to the
pytest process (one per xdist worker), so no other run on the machine can flush it.

What a test gets is fresh; what it costs is shared where the result cannot differ: URL
builders, Jinja bytecode, the SQLite schema file, argon2 hashes and verifications are made
once per pytest process (see each fixture for why that changes nothing a test checks).
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parent.parent
TEST_DB = os.environ.get("TM_TEST_DB", "sqlite")
PG_ADMIN_URL = os.environ.get("TM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
ADMIN_PASSWORD = "admin-password-1"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that never reaches a database runs once, on SQLite: it is marked ``sqlite_only``,
    which the PostgreSQL pass of tests/run.sh deselects. The only way to the database is the
    ``pg_database`` fixture (through ``env``, ``app``, ``session``, ``api``...), so a test
    without it among its fixtures (the shipped playbooks, the inventory parser, the cron
    maths...) would run the very same code twice."""
    for item in items:
        if "pg_database" not in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.sqlite_only)


def _pg(url: str) -> str:
    return "postgresql+psycopg://" + url.split("://", 1)[1]


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str | None]:
    if TEST_DB != "postgresql":
        yield None
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    name = f"tm_test_{worker}_{os.getpid()}"
    admin = create_engine(_pg(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    from server.core import db

    db.init_engine("sqlite://")  # release connections before dropping
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def private_redis_url(tmp_path_factory) -> Iterator[str]:
    """A redis-server for this pytest process alone, on a unix socket.

    The Redis on 127.0.0.1:6379 is shared with every other pytest process on the
    machine, and the ``app`` fixture flushes its database before each test: a concurrent
    run could wipe a queued job, a session or the audit head anchor in the middle of a
    test. One private server per process (per xdist worker) costs a fraction of a second
    and ends that class of flake; processes a test starts (worker, scheduler) inherit it
    through ``env``."""
    from server.core.redis_conn import ensure_embedded_redis

    base = tmp_path_factory.mktemp("redis")
    sock = base / "redis.sock"
    proc = ensure_embedded_redis(base, sock)
    yield f"unix://{sock}"
    if proc is not None:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_database: str | None,
        private_redis_url: str) -> dict[str, str]:
    """Environment for the app and for any process a test starts (worker, scheduler)."""
    instance = tmp_path / "instance"
    values = {
        "TASKMANAGER_INSTANCE_DIR": str(instance),
        "TASKMANAGER_DATABASE_URL": pg_database or f"sqlite:///{instance / 'taskmanager.db'}",
        "TASKMANAGER_REDIS_URL": private_redis_url,
        "TASKMANAGER_QUEUE": f"test-{uuid.uuid4().hex[:8]}",
        # No role must enrol a second factor unless a test says so (tests/test_identity_mfa.py
        # covers the default, admins and approvers).
        "TASKMANAGER_MFA_ROLES": "",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def _empty_schema(engine) -> None:
    """Every model table, empty. On PostgreSQL the session's database is reused: its rows
    deleted and the sequences of its tables restarted (what TRUNCATE ... RESTART IDENTITY
    does, without TRUNCATE's new files and exclusive locks: a tenth of its time on tables
    of a few rows) when the tables are all there, a rebuild otherwise."""
    from sqlalchemy import inspect

    from server.core.db import Base

    if engine.dialect.name == "postgresql":
        tables = [t.name for t in Base.metadata.sorted_tables]
        if set(tables) <= set(inspect(engine).get_table_names()):
            with engine.begin() as conn:
                conn.exec_driver_sql("SET LOCAL session_replication_role = replica")  # no FK checks
                for table in reversed(tables):
                    conn.exec_driver_sql(f'DELETE FROM "{table}"')
                owned = conn.execute(text(
                    "SELECT DISTINCT s.relname FROM pg_class s"
                    " JOIN pg_depend d ON d.objid = s.oid AND d.deptype IN ('a', 'i')"
                    " JOIN pg_class t ON t.oid = d.refobjid"
                    " WHERE s.relkind = 'S' AND t.relname = ANY(:tables)"), {"tables": tables}).scalars()
                for sequence in owned:
                    conn.exec_driver_sql(f'ALTER SEQUENCE "{sequence}" RESTART')
            return
        Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)


@pytest.fixture(scope="session", autouse=True)
def _one_argon2_hash_per_password():
    """Test users share a handful of passwords: hash each once per session (still a real
    argon2id hash) instead of ~0.1 s of CPU for every user created; and verify each
    (hash, password) pair for real once per session, since the suite signs the same users
    in with the same passwords hundreds of times (a verification is as dear as a hash).
    A wrong password is still refused: its pair was verified for real, the refusal is
    remembered. Production hashing is untouched; test_access checks its parameters,
    salts and verification."""
    from server.people import auth

    real_hash = auth.hash_password
    real_hasher = auth._hasher
    hashes: dict[str, str] = {}
    verdicts: dict[tuple, BaseException | bool] = {}

    def hash_once(password: str) -> str:
        if password not in hashes:
            hashes[password] = real_hash(password)
        return hashes[password]

    class VerifyOnce(type(real_hasher)):  # type: ignore[misc]
        def verify(self, hash: str | bytes, password: str | bytes) -> bool:
            key = (hash, password)
            if key not in verdicts:
                try:
                    verdicts[key] = super().verify(hash, password)
                except Exception as exc:  # VerifyMismatchError, InvalidHashError...
                    verdicts[key] = exc
            verdict = verdicts[key]
            if isinstance(verdict, BaseException):
                raise type(verdict)(*verdict.args)
            return verdict

    auth.hash_password = hash_once
    auth._hasher = VerifyOnce.from_parameters(real_hasher._parameters)
    yield
    auth.hash_password = real_hash
    auth._hasher = real_hasher


@pytest.fixture(scope="session")
def _sqlite_schema_template(tmp_path_factory) -> Path:
    """An SQLite file with every model table, made once per pytest process: each test copies
    it (a few ms) instead of issuing the ~50 CREATE statements again (~0.1-0.3 s)."""
    from server.core import models  # noqa: F401  (every table on Base.metadata)
    from server.core.db import Base

    path = tmp_path_factory.mktemp("schema") / "template.db"
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session", autouse=True)
def _one_url_builder_per_rule():
    """``create_app`` registers ~200 URL rules for every test, and werkzeug compiles two
    Python functions per rule (AST + ``compile``): about half of an app's creation time.
    The generated code depends only on the rule's parsed parts, defaults and
    ``append_unknown`` (converters are looked up on the rule at call time), so the same
    rule gets the same function: compile it once per session. Routing and URL building
    are unchanged; the production path compiles as before."""
    from werkzeug.routing.rules import Rule

    real = Rule._compile_builder
    memo: dict = {}

    def compile_once(self, append_unknown: bool = True):
        defaults = tuple(sorted((k, repr(v)) for k, v in (self.defaults or {}).items()))
        converters = tuple(sorted((k, type(c).__qualname__, repr({a: v for a, v in vars(c).items() if a != "map"}))
                                  for k, c in self._converters.items()))
        key = (self.rule, tuple(self._trace), defaults, converters, append_unknown)
        if key not in memo:
            memo[key] = real(self, append_unknown)
        return memo[key]

    Rule._compile_builder = compile_once  # type: ignore[method-assign]
    yield
    Rule._compile_builder = real  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def _jinja_bytecode():
    """One Jinja bytecode cache for every app of the session: each test's app would compile
    the same templates from source again (a tenth of a page-heavy test's time). Jinja keys
    the cache by template name and checks a hash of the source, so a changed template is
    compiled anew; the code is the same the app would have compiled (every app of the suite
    comes from ``create_app``, one Jinja configuration)."""
    from jinja2 import BytecodeCache

    class InMemory(BytecodeCache):
        def __init__(self) -> None:
            self.store: dict[str, bytes] = {}

        def load_bytecode(self, bucket) -> None:
            if bucket.key in self.store:
                bucket.bytecode_from_string(self.store[bucket.key])

        def dump_bytecode(self, bucket) -> None:
            self.store[bucket.key] = bucket.bytecode_to_string()

    return InMemory()


@pytest.fixture
def app(env: dict[str, str], request: pytest.FixtureRequest):
    import shutil

    from server import create_app
    from server.core import db
    from server.core.redis_conn import redis

    url = env["TASKMANAGER_DATABASE_URL"]
    fresh_sqlite = url.startswith("sqlite:///")
    if fresh_sqlite:
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(request.getfixturevalue("_sqlite_schema_template"), path)
    app = create_app({"TESTING": True})
    app.jinja_env.bytecode_cache = request.getfixturevalue("_jinja_bytecode")
    engine = db.engine()
    if not fresh_sqlite:
        _empty_schema(engine)
    redis().flushdb()
    with app.app_context():
        yield app
    db.session.remove()


@pytest.fixture
def session(app):
    from server.core import db

    return db.session()


class Api:
    """A thin JSON client with a bearer token; ``call`` returns (status, json)."""

    def __init__(self, client, token: str) -> None:
        self.client = client
        self.token = token

    def call(self, method: str, path: str, json: Any = None, **kw) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        resp = self.client.open(path, method=method, json=json, headers=headers, **kw)
        body = resp.get_json(silent=True)
        return resp.status_code, body if body is not None else resp.data

    def get(self, path: str, **kw):
        return self.call("GET", path, **kw)

    def post(self, path: str, json: Any = None, **kw):
        return self.call("POST", path, json=json, **kw)

    def patch(self, path: str, json: Any = None, **kw):
        return self.call("PATCH", path, json=json, **kw)

    def delete(self, path: str, **kw):
        return self.call("DELETE", path, **kw)


def make_user(session, name: str, role: str, password: str = ADMIN_PASSWORD):
    from server.people.auth import create_user

    user = create_user(session, name, role, password, actor="test")
    session.commit()
    return user


def token_for(session, user) -> str:
    from server.people.auth import issue_token

    token = issue_token(session, user, name="test")
    session.commit()
    return token


@pytest.fixture
def admin_user(session):
    return make_user(session, "admin", "admin")


@pytest.fixture
def api(app, session, admin_user) -> Api:
    return Api(app.test_client(), token_for(session, admin_user))


@pytest.fixture
def api_as(app, session):
    """``api_as("bob", "operator")`` → an Api for a new user with that role."""

    def make(name: str, role: str) -> Api:
        return Api(app.test_client(), token_for(session, make_user(session, name, role)))

    return make


@pytest.fixture
def live_server(app) -> Iterator[str]:
    """The app over real HTTP (werkzeug, threaded) on a free loopback port; yields its base URL.
    For browsers and for tests that need real sockets (streamed exports, client addresses)."""
    import threading

    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(10)


# --- real SSH servers and real workers ------------------------------------------------------

@pytest.fixture
def sshlab():
    """``sshlab(n)`` → a started ``tests.sshlab.SSHLab`` of n real sshd servers, stopped after."""
    from tests.sshlab import SSHLab

    labs: list = []

    def start(n: int = 20, **kw):
        lab = SSHLab(n, **kw)
        labs.append(lab)
        lab.__enter__()
        return lab

    yield start
    for lab in labs:
        lab.stop()


@pytest.fixture
def run_worker(env):
    """``run_worker()`` drains the test queue with a real RQ worker process
    (``flask --app wsgi worker --burst``); returns the CompletedProcess (stdout, stderr)."""
    import subprocess
    import sys

    def run(timeout: float = 300, extra_env: dict[str, str] | None = None):
        flask = str(Path(sys.executable).parent / "flask")
        return subprocess.run(
            [flask, "--app", "wsgi", "worker", "--burst"],
            cwd=REPO, env={**os.environ, **env, **(extra_env or {})},
            capture_output=True, text=True, timeout=timeout,
        )

    return run
