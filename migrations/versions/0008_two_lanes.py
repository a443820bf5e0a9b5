"""The worker's two lanes: folds may queue their pair counts for recsql.fold_pairs() in a second session.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

from pathlib import Path

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# Frozen SQL for this revision lives beside the revisions and never changes once released.
_SQL = Path(__file__).resolve().parent.parent / "sql"


def _run(sql: str) -> None:
    # Straight to psycopg without parameters, so % and $$ in the SQL are taken literally.
    op.get_bind().connection.dbapi_connection.cursor().execute(sql)


def upgrade() -> None:
    _run((_SQL / "0008.up.sql").read_text())


def downgrade() -> None:
    _run((_SQL / "0008.down.sql").read_text())
