"""Alembic environment: runs revisions on the connection URL recsql hands over, untouched."""

from __future__ import annotations

import psycopg
from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

VERSION_TABLE = "recsql_alembic_version"


def run_migrations_online() -> None:
    url = context.config.attributes["database_url"]
    # The URL goes to psycopg as is; SQLAlchemy only wraps the connection for Alembic.
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(url), poolclass=NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=None,
            version_table=VERSION_TABLE,
            transaction_per_migration=False,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("recsql migrations run online only: use `recsql db upgrade`")
run_migrations_online()
