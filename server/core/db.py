"""Database engine and session: one per process, shared by web, worker and scheduler.

SQLite gets WAL, a busy timeout and foreign keys so that the web app, the worker and the
scheduler can write concurrently; PostgreSQL URLs are used as given.

A request that finds every pooled connection in use waits ``TASKMANAGER_DB_POOL_TIMEOUT``
seconds (default 5), not SQLAlchemy's 30: a web thread should answer "busy, retry" (503,
see ``api.register_errors``) quickly rather than sit on the client's connection. Streamed
responses read through ``streamed``, which never keeps a connection while the client reads.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, cast

from sqlalchemy import create_engine, event
from sqlalchemy.engine import CursorResult, Engine, Result
from sqlalchemy.orm import DeclarativeBase, Session, scoped_session, sessionmaker


class Base(DeclarativeBase):
    pass


_engine: Engine | None = None
DEFAULT_POOL_TIMEOUT_S = 5.0
session: scoped_session[Session] = scoped_session(sessionmaker(expire_on_commit=False))


def normalise_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs (psycopg2 is not installed)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def init_engine(url: str) -> Engine:
    """(Re)bind the process-wide session to ``url``."""
    global _engine
    url = normalise_url(url)
    if _engine is not None and str(_engine.url) == url:
        return _engine
    if _engine is not None:
        session.remove()
        _engine.dispose()
    if url.startswith("sqlite"):
        pool = {"pool_timeout": pool_timeout()} if url not in ("sqlite://", "sqlite:///:memory:") else {}
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **pool)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, pool_timeout=pool_timeout())
    session.configure(bind=engine)
    _engine = engine
    return engine


def pool_timeout() -> float:
    """Seconds to wait for a pooled connection (``TASKMANAGER_DB_POOL_TIMEOUT``)."""
    raw = os.environ.get("TASKMANAGER_DB_POOL_TIMEOUT", "")
    try:
        value = float(raw) if raw else DEFAULT_POOL_TIMEOUT_S
    except ValueError:
        raise ValueError(f"TASKMANAGER_DB_POOL_TIMEOUT must be a number of seconds, not {raw!r}") from None
    return value if value > 0 else DEFAULT_POOL_TIMEOUT_S


def engine() -> Engine:
    if _engine is None:
        raise RuntimeError("database not initialised: call init_engine() first")
    return _engine


@contextmanager
def transaction() -> Iterator[Session]:
    """A short unit of work outside a request: commit on success, roll back on error."""
    s = session()
    try:
        yield s
        s.commit()
    except Exception:
        s.rollback()
        raise


def streamed(produce: Callable[[Session], Iterator[str]]) -> Iterator[str]:
    """The chunks of a streamed response, read on a session of its own.

    A stream outlives its request: the request's scoped session is removed when the view
    returns, and one captured by the generator would check a connection out again and
    keep it until the garbage collector found it (60 abandoned downloads emptied the
    pools). Here the session holds a connection only while a batch is read: it is handed
    back before each chunk goes to the client (a slow or vanished client pins nothing),
    and the session is closed when the stream ends, fails, or is abandoned (the server
    closes the response, which closes this generator). Batches are read in separate
    transactions; the producers page by id, so rows are neither repeated nor skipped.
    """
    s = Session(bind=engine(), expire_on_commit=False)
    try:
        for chunk in produce(s):
            s.close()
            yield chunk
    finally:
        s.close()


def rowcount(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE matched. ``Session.execute`` is typed as returning a
    plain ``Result``; for such a statement it is a ``CursorResult``, which has the count."""
    return cast(CursorResult[Any], result).rowcount
