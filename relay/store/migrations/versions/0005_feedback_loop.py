"""the feedback loop: provider events, suppression lists, notifications

Tables for events (once per provider event id), SparkPost batch ids,
per-account suppression lists and notifications; account settings for
suspension, notifications, shared suppression lists, one-click unsubscribe and
tracking; and each provider's unguessable webhook path.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "webhook_batches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider_id", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.String(length=200), nullable=False),
        sa.Column("received_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_batches")),
        sa.UniqueConstraint("provider_id", "batch_id", name="uq_webhook_batches"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider_id", sa.Integer(), nullable=False),
        sa.Column("provider_event_id", sa.String(length=200), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(length=32), nullable=True),
        sa.Column("recipient_id", sa.Integer(), nullable=True),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("type", sa.String(length=20), nullable=False),
        sa.Column("bounce_class", sa.String(length=10), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("received_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_events_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint("provider_id", "provider_event_id", name="uq_events_provider_event"),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_account_type_at", ["account_id", "type", "at"])
        batch_op.create_index(batch_op.f("ix_events_message_id"), ["message_id"])

    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("dedupe_key", sa.String(length=300), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("mail_state", sa.String(length=10), nullable=False),
        sa.Column("mail_error", sa.Text(), nullable=True),
        sa.Column("webhook_state", sa.String(length=10), nullable=False),
        sa.Column("webhook_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_notifications_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_notifications_dedupe_key")),
    )
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_notifications_account_id"), ["account_id"])

    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("reason", sa.String(length=20), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("expires_at", _TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_suppressions_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_suppressions")),
        sa.UniqueConstraint("account_id", "address", name="uq_suppressions_address"),
    )
    with op.batch_alter_table("suppressions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_suppressions_account_id"), ["account_id"])

    false = sa.false()
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("suspended_at", _TIME, nullable=True))
        batch_op.add_column(sa.Column("suspended_reason", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("notify_addresses", sa.JSON(), nullable=False, server_default="[]")
        )
        batch_op.add_column(sa.Column("notify_url", sa.String(length=2000), nullable=True))
        batch_op.add_column(sa.Column("notify_secret", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("share_suppressions", sa.Boolean(), nullable=False, server_default=false)
        )
        batch_op.add_column(
            sa.Column("unsubscribe", sa.Boolean(), nullable=False, server_default=false)
        )
        batch_op.add_column(sa.Column("open_tracking", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("click_tracking", sa.Boolean(), nullable=True))

    with op.batch_alter_table("providers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("webhook_token", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(
            batch_op.f("uq_providers_webhook_token"), ["webhook_token"]
        )


def downgrade() -> None:
    with op.batch_alter_table("providers", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_providers_webhook_token"), type_="unique")
        batch_op.drop_column("webhook_token")

    with op.batch_alter_table("accounts", schema=None) as batch_op:
        for column in (
            "click_tracking",
            "open_tracking",
            "unsubscribe",
            "share_suppressions",
            "notify_secret",
            "notify_url",
            "notify_addresses",
            "suspended_reason",
            "suspended_at",
        ):
            batch_op.drop_column(column)

    with op.batch_alter_table("suppressions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_suppressions_account_id"))
    op.drop_table("suppressions")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notifications_account_id"))
    op.drop_table("notifications")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_message_id"))
        batch_op.drop_index("ix_events_account_type_at")
    op.drop_table("events")
    op.drop_table("webhook_batches")
