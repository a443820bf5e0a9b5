"""Less work per event: item_pairs keys with the kind last, a bare duplicate probe and one-pass validation
in the events triggers, window events deduplicated by seq, bulk list marking that skips lists already due whole;
the replay horizon does not wait for transactions that promised to insert no events.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27
"""

from pathlib import Path

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# Frozen SQL for this revision lives beside the revisions and never changes once released.
_SQL = Path(__file__).resolve().parent.parent / "sql"


def _run(sql: str) -> None:
    # Straight to psycopg without parameters, so % and $$ in the SQL are taken literally.
    op.get_bind().connection.dbapi_connection.cursor().execute(sql)


def upgrade() -> None:
    _run((_SQL / "0011.up.sql").read_text())


def downgrade() -> None:
    _run((_SQL / "0011.down.sql").read_text())
