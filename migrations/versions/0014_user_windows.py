"""Each user's windows are kept in recsql.user_windows (a cache of the log, emptied when the window
settings change): a fold reads one row per user instead of the user's last events and their items.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-27
"""

from pathlib import Path

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# Frozen SQL for this revision lives beside the revisions and never changes once released.
_SQL = Path(__file__).resolve().parent.parent / "sql"


def _run(sql: str) -> None:
    # Straight to psycopg without parameters, so % and $$ in the SQL are taken literally.
    op.get_bind().connection.dbapi_connection.cursor().execute(sql)


def upgrade() -> None:
    _run((_SQL / "0014.up.sql").read_text())


def downgrade() -> None:
    _run((_SQL / "0014.down.sql").read_text())
