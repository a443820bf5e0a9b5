"""A bulk refresh of neighbour lists scores the pairs inside the statement that writes the lists
(no scratch table of scored pairs); a fold's queued pairs come in four parts instead of two halves.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-28
"""

from pathlib import Path

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

# Frozen SQL for this revision lives beside the revisions and never changes once released.
_SQL = Path(__file__).resolve().parent.parent / "sql"


def _run(sql: str) -> None:
    # Straight to psycopg without parameters, so % and $$ in the SQL are taken literally.
    op.get_bind().connection.dbapi_connection.cursor().execute(sql)


def upgrade() -> None:
    _run((_SQL / "0016.up.sql").read_text())


def downgrade() -> None:
    _run((_SQL / "0016.down.sql").read_text())
