"""chat settings (mode, language), user interface language and output, job locale and task

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 05:35:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    # Plain ADD COLUMNs: batch mode would copy tables that others reference.
    op.add_column("users", sa.Column("ui_language", sa.String(length=8), nullable=True))
    op.add_column(
        "users",
        sa.Column("output_format", sa.String(length=16), server_default="text", nullable=False),
    )
    op.add_column(
        "chats", sa.Column("mode", sa.String(length=16), server_default="auto", nullable=False)
    )
    op.add_column(
        "chats", sa.Column("media_files", sa.Boolean(), server_default=sa.true(), nullable=False)
    )
    op.add_column("chats", sa.Column("language", sa.String(length=64), nullable=True))
    op.add_column("chats", sa.Column("left_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("chats", sa.Column("migrated_to_chat_id", sa.BigInteger(), nullable=True))
    op.add_column("jobs", sa.Column("locale", sa.String(length=8), nullable=True))
    op.add_column("jobs", sa.Column("language", sa.String(length=64), nullable=True))
    op.add_column(
        "jobs",
        sa.Column("task", sa.String(length=16), server_default="transcribe", nullable=False),
    )
    op.add_column(
        "jobs", sa.Column("output", sa.String(length=16), server_default="text", nullable=False)
    )
    op.add_column("jobs", sa.Column("thread_id", sa.BigInteger(), nullable=True))
    op.add_column("jobs", sa.Column("source_job_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    for column in ("source_job_id", "thread_id", "output", "task", "language", "locale"):
        op.drop_column("jobs", column)
    for column in ("migrated_to_chat_id", "left_at", "language", "media_files", "mode"):
        op.drop_column("chats", column)
    op.drop_column("users", "output_format")
    op.drop_column("users", "ui_language")
