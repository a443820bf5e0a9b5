"""Small folds and refresh rounds read the big tables by key (recsql._lookup_joins, recsql._restore_joins):
most of their fixed cost, and of the lag under steady traffic, was hashing whole tables for a few rows.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-27
"""

from pathlib import Path

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# Frozen SQL for this revision lives beside the revisions and never changes once released.
_SQL = Path(__file__).resolve().parent.parent / "sql"


def _run(sql: str) -> None:
    # Straight to psycopg without parameters, so % and $$ in the SQL are taken literally.
    op.get_bind().connection.dbapi_connection.cursor().execute(sql)


def upgrade() -> None:
    _run((_SQL / "0013.up.sql").read_text())


def downgrade() -> None:
    _run((_SQL / "0013.down.sql").read_text())
