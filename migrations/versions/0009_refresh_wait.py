"""refresh_neighbors(max_items, wait): a helper session can refresh without waiting for pairs to be added.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27
"""

from pathlib import Path

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# Frozen SQL for this revision lives beside the revisions and never changes once released.
_SQL = Path(__file__).resolve().parent.parent / "sql"


def _run(sql: str) -> None:
    # Straight to psycopg without parameters, so % and $$ in the SQL are taken literally.
    op.get_bind().connection.dbapi_connection.cursor().execute(sql)


def upgrade() -> None:
    _run((_SQL / "0009.up.sql").read_text())


def downgrade() -> None:
    _run((_SQL / "0009.down.sql").read_text())
