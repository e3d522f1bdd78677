"""jobs.claimed_by, jobs.lease_until: the worker running a job and until when (see `leases`)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 09:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    # Plain ADD COLUMNs: batch mode would copy the table. Jobs from before are unclaimed, so
    # the first worker that runs them takes them.
    op.add_column("jobs", sa.Column("claimed_by", sa.String(length=128), nullable=True))
    op.add_column("jobs", sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    # Plain DROP COLUMNs (SQLite 3.35+), as 0006: batch mode would copy the table, which other
    # tables' foreign keys refer to.
    op.drop_column("jobs", "lease_until")
    op.drop_column("jobs", "claimed_by")
