"""Retried event ids are dropped by the inserting statement's trigger (one probe per row in one
statement) under a unique constraint deferred to commit, instead of a row trigger's probe: COPY
keeps its batched inserts and skips the row trigger.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-28
"""

from pathlib import Path

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# Frozen SQL for this revision lives beside the revisions and never changes once released.
_SQL = Path(__file__).resolve().parent.parent / "sql"


def _run(sql: str) -> None:
    # Straight to psycopg without parameters, so % and $$ in the SQL are taken literally.
    op.get_bind().connection.dbapi_connection.cursor().execute(sql)


def upgrade() -> None:
    _run((_SQL / "0015.up.sql").read_text())


def downgrade() -> None:
    _run((_SQL / "0015.down.sql").read_text())
