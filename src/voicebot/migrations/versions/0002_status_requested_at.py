"""jobs.status_requested_at: the status reply was attempted

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 02:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    # A plain ADD COLUMN: batch mode would copy `jobs`, which `usage` references.
    op.add_column(
        "jobs", sa.Column("status_requested_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("status_requested_at")
