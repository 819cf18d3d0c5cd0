"""PostgreSQL: what outlives a request (the prediction log and its labels). One SQLAlchemy engine per process
(psycopg 3), and the schema brought up to date by Alembic the first time a process uses it.

Every process that touches the database (the API, the model workers) migrates on first use, under a
PostgreSQL advisory lock, so a deployment without the launcher (Kubernetes) needs no separate step;
`imageclf run` migrates once at start, before the other processes begin.
"""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import sqlalchemy as sa

from imageclf import settings

_engine: sa.Engine | None = None
_migrated = False
_lock = threading.Lock()
#: pg_advisory_lock key of the migrations: one process migrates, the others wait for it.
_MIGRATION_LOCK = 0x1A6EC1F


def sqlalchemy_url(url: str) -> str:
    """`url` with psycopg 3 as SQLAlchemy's driver."""
    for scheme in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme):]
    raise ValueError(f"not a postgresql:// URL: {url[:40]!r}")


def engine() -> sa.Engine:
    """This process's engine for DATABASE_URL, its schema up to date (made after the fork, never shared)."""
    global _engine, _migrated
    with _lock:
        if _engine is None:
            if not settings.DATABASE_URL:
                raise RuntimeError("DATABASE_URL is not set")
            _engine = sa.create_engine(sqlalchemy_url(settings.DATABASE_URL), pool_pre_ping=True, pool_size=4,
                                       max_overflow=4, connect_args={"connect_timeout": 5})
        if not _migrated:
            migrate(_engine)
            _migrated = True
        return _engine


def connection() -> psycopg.Connection:
    """A new psycopg connection to DATABASE_URL, the schema up to date (the prediction log's writer COPYs)."""
    engine()
    return psycopg.connect(sqlalchemy_url(settings.DATABASE_URL).replace("postgresql+psycopg://", "postgresql://"),
                           connect_timeout=5)


def migrate(target: sa.Engine) -> None:
    """Bring the schema to Alembic's head (idempotent; concurrent callers wait for the first)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    with target.begin() as connection:
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
