"""Alembic migrations applied programmatically (no alembic.ini needed)."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from server.core import db

MIGRATIONS = Path(__file__).parent.parent / "migrations"


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", db.engine().url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def upgrade(revision: str = "head") -> None:
    with db.engine().begin() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
