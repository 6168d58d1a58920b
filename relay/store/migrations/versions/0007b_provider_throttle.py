"""provider ceilings: shared token buckets, pauses and connection leases

``provider_throttle``: one row per provider with a ceiling or a pause (tokens,
last refill, paused until, the share of the rate in force). ``provider_leases``:
the connection slots of a provider's ``max_connections`` each process holds,
with an expiry.

Revision ID: 0007b
Revises: 0007a
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007b"
down_revision: str | None = "0007a"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "provider_throttle",
        sa.Column("provider_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("refilled_at", sa.Float(), nullable=False),
        sa.Column("paused_until", sa.Float(), nullable=True),
        sa.Column("rate_factor", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("provider_id", name=op.f("pk_provider_throttle")),
    )
    op.create_table(
        "provider_leases",
        sa.Column("provider_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("provider_id", "holder", name=op.f("pk_provider_leases")),
    )


def downgrade() -> None:
    op.drop_table("provider_leases")
    op.drop_table("provider_throttle")
