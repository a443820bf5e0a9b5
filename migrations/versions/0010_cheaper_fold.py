"""A cheaper fold: window duplicates dropped by an array check, batch sorts by id bytes, a smaller batch sample.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27
"""

from pathlib import Path

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# Frozen SQL for this revision lives beside the revisions and never changes once released.
_SQL = Path(__file__).resolve().parent.parent / "sql"


def _run(sql: str) -> None:
    # Straight to psycopg without parameters, so % and $$ in the SQL are taken literally.
    op.get_bind().connection.dbapi_connection.cursor().execute(sql)


def upgrade() -> None:
    _run((_SQL / "0010.up.sql").read_text())


def downgrade() -> None:
    _run((_SQL / "0010.down.sql").read_text())
