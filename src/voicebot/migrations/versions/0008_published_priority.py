"""jobs.published_priority, jobs.published_at: what RabbitMQ holds a job with (see `broker`)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 11:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    # A plain ADD COLUMN, as 0007. Jobs from before are not held by any broker: the first
    # bot that starts publishes them.
    op.add_column("jobs", sa.Column("published_priority", sa.Integer(), nullable=True))
    op.add_column("jobs", sa.Column("published_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    op.drop_column("jobs", "published_at")
    op.drop_column("jobs", "published_priority")
