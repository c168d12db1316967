"""Database engine and session: one per process, shared by web, worker and scheduler.

SQLite gets WAL, a busy timeout and foreign keys so that the web app, the worker and the
scheduler can write concurrently; PostgreSQL URLs are used as given.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, scoped_session, sessionmaker


class Base(DeclarativeBase):
    pass


_engine: Engine | None = None
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
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    session.configure(bind=engine)
    _engine = engine
    return engine


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
