"""refusals: the door's refusals counted per UTC day and reason;
usage.language: the language of the transcript charged, kept when the transcript goes

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "refusals",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day", "reason", name=op.f("pk_refusals")),
    )
    # A plain ADD COLUMN: batch mode would copy the table.
    op.add_column("usage", sa.Column("language", sa.String(length=16), nullable=True))
    # Usage written before this revision takes its transcript's language while it still exists;
    # one already purged stays unknown.
    op.execute(
        "UPDATE usage SET language = ("
        "SELECT transcripts.language FROM jobs"
        " JOIN transcripts ON transcripts.id = jobs.transcript_id"
        " WHERE jobs.id = usage.job_id)"
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_column("usage", "language")
    op.drop_table("refusals")
