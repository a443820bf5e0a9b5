"""Each fold's queued pairs in two halves (by the parity of item_a) that two sessions add side by side:
recsql.fold_pairs(part, wait), a lock per half, refreshers holding both.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27
"""

from pathlib import Path

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# Frozen SQL for this revision lives beside the revisions and never changes once released.
_SQL = Path(__file__).resolve().parent.parent / "sql"


def _run(sql: str) -> None:
    # Straight to psycopg without parameters, so % and $$ in the SQL are taken literally.
    op.get_bind().connection.dbapi_connection.cursor().execute(sql)


def upgrade() -> None:
    _run((_SQL / "0012.up.sql").read_text())


def downgrade() -> None:
    _run((_SQL / "0012.down.sql").read_text())
