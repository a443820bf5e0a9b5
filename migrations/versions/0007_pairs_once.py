"""Item pairs stored once per pair (item_a < item_b) instead of in both directions.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from pathlib import Path

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Frozen SQL for this revision lives beside the revisions and never changes once released.
_SQL = Path(__file__).resolve().parent.parent / "sql"


def _run(sql: str) -> None:
    # Straight to psycopg without parameters, so % and $$ in the SQL are taken literally.
    op.get_bind().connection.dbapi_connection.cursor().execute(sql)


def upgrade() -> None:
    _run((_SQL / "0007.up.sql").read_text())


def downgrade() -> None:
    _run((_SQL / "0007.down.sql").read_text())
