"""sending limits: per account and credential, and the counters every process shares

``accounts`` and ``credentials`` get ``max_messages_per_minute``,
``max_messages_per_hour``, ``max_recipients_per_hour``,
``max_recipients_per_day`` and ``max_sessions`` (NULL: no limit);
``limit_counters`` holds the units taken per (subject, limit, window) and
``limit_sessions`` the open sessions per (subject, process).

Revision ID: 0007a
Revises: 0006d
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007a"
down_revision: str | None = "0006d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    "max_messages_per_minute",
    "max_messages_per_hour",
    "max_recipients_per_hour",
    "max_recipients_per_day",
    "max_sessions",
)


def upgrade() -> None:
    for table in ("accounts", "credentials"):
        with op.batch_alter_table(table) as batch:
            for column in COLUMNS:
                batch.add_column(sa.Column(column, sa.Integer(), nullable=True))
    op.create_table(
        "limit_counters",
        sa.Column("subject", sa.String(40), nullable=False),
        sa.Column("name", sa.String(40), nullable=False),
        sa.Column("period", sa.BigInteger(), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("subject", "name", "period", name="pk_limit_counters"),
    )
    op.create_table(
        "limit_sessions",
        sa.Column("subject", sa.String(40), nullable=False),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("subject", "holder", name="pk_limit_sessions"),
    )


def downgrade() -> None:
    op.drop_table("limit_sessions")
    op.drop_table("limit_counters")
    for table in ("accounts", "credentials"):
        with op.batch_alter_table(table) as batch:
            for column in COLUMNS:
                batch.drop_column(column)
