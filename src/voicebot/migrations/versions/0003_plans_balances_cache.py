"""plans, bans and balances; job priority and reservation; charges; cache keys; transactions

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 03:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    # Plain ADD COLUMNs: batch mode would copy tables that others reference.
    plan = sa.Enum("free", "premium", "unlimited", name="plan", native_enum=False, length=16)
    op.add_column("users", sa.Column("plan", plan, server_default="free", nullable=False))
    op.add_column("users", sa.Column("plan_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "users", sa.Column("banned", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    op.add_column(
        "users", sa.Column("balance_seconds", sa.Float(), server_default="0", nullable=False)
    )
    op.add_column("jobs", sa.Column("priority", sa.Integer(), server_default="0", nullable=False))
    op.add_column(
        "jobs", sa.Column("reserved_seconds", sa.Float(), server_default="0", nullable=False)
    )
    op.add_column(
        "usage", sa.Column("charged_seconds", sa.Float(), server_default="0", nullable=False)
    )
    op.add_column(
        "usage", sa.Column("balance_seconds", sa.Float(), server_default="0", nullable=False)
    )
    op.add_column(
        "usage", sa.Column("cached", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    op.add_column("transcripts", sa.Column("sha256", sa.String(length=64), nullable=True))
    op.add_column(
        "transcripts",
        sa.Column("language_setting", sa.String(length=64), server_default="", nullable=False),
    )
    op.create_index(op.f("ix_transcripts_sha256"), "transcripts", ["sha256"], unique=False)
    op.create_index(op.f("ix_transcripts_created_at"), "transcripts", ["created_at"], unique=False)
    op.create_table(
        "transactions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("stars", sa.Integer(), nullable=True),
        sa.Column("telegram_payment_charge_id", sa.String(length=256), nullable=True),
        sa.Column("payload", sa.String(length=256), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_transactions_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transactions")),
        sa.UniqueConstraint(
            "telegram_payment_charge_id",
            "kind",
            name=op.f("uq_transactions_telegram_payment_charge_id"),
        ),
    )
    op.create_index(op.f("ix_transactions_user_id"), "transactions", ["user_id"], unique=False)
    op.create_index(
        op.f("ix_transactions_created_at"), "transactions", ["created_at"], unique=False
    )
    # The unused `quotas` table of 0001 is replaced by the plan columns on `users`.
    op.drop_table("quotas")


def downgrade() -> None:
    """Revert this revision."""
    op.create_table(
        "quotas",
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("plan", sa.String(length=32), nullable=False),
        sa.Column("seconds_per_day", sa.Float(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_quotas_user_id_users")),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_quotas")),
    )
    op.drop_table("transactions")
    with op.batch_alter_table("transcripts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_transcripts_created_at"))
        batch_op.drop_index(batch_op.f("ix_transcripts_sha256"))
        batch_op.drop_column("language_setting")
        batch_op.drop_column("sha256")
    with op.batch_alter_table("usage", schema=None) as batch_op:
        batch_op.drop_column("cached")
        batch_op.drop_column("balance_seconds")
        batch_op.drop_column("charged_seconds")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("reserved_seconds")
        batch_op.drop_column("priority")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("balance_seconds")
        batch_op.drop_column("banned")
        batch_op.drop_column("plan_expires_at")
        batch_op.drop_column("plan")
