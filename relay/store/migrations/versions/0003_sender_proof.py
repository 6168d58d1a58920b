"""sender proof: how and when each sender was verified; mailed confirmation codes

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Before this revision any token could verify any sender by say-so. Existing
verified rows are marked from the audit log: ``operator`` when the last
successful ``sender.verify`` of the row was the operator's (the command line,
or an operator token), ``tenant`` when it was a tenant token's, ``dns`` for
a domain verified by its TXT record, and ``unreviewed`` when nothing tells.
``relay sender list --review`` shows the ``tenant`` and ``unreviewed`` ones.
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("senders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("method", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("proof_account_id", sa.Integer(), nullable=True))

    op.create_table(
        "sender_confirmations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sends", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_sender_confirmations_account_id_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sender_confirmations")),
        sa.UniqueConstraint(
            "account_id", "address", name=op.f("uq_sender_confirmations_account_id")
        ),
    )
    with op.batch_alter_table("sender_confirmations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_sender_confirmations_account_id"), ["account_id"], unique=False
        )

    _mark_existing()


def _pattern(target: str) -> str:
    """An audit target as ``check_sender`` stored it (lower case, ``*@`` dropped)."""
    target = target.strip().lower()
    target = target.removeprefix("*@")
    return target.rstrip(".")


def _mark_existing() -> None:
    conn = op.get_bind()
    senders = sa.table(
        "senders",
        sa.column("id", sa.Integer),
        sa.column("account_id", sa.Integer),
        sa.column("pattern", sa.String),
        sa.column("verified", sa.Boolean),
        sa.column("dns_token", sa.String),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("method", sa.String),
        sa.column("verified_at", sa.DateTime(timezone=True)),
    )
    audit = sa.table(
        "audit_log",
        sa.column("id", sa.Integer),
        sa.column("at", sa.DateTime(timezone=True)),
        sa.column("actor", sa.String),
        sa.column("action", sa.String),
        sa.column("target", sa.String),
        sa.column("account_id", sa.Integer),
        sa.column("result", sa.String),
    )
    tokens = sa.table("api_tokens", sa.column("id", sa.Integer), sa.column("operator", sa.Boolean))
    operator_tokens = {
        f"token:{row.id}" for row in conn.execute(sa.select(tokens.c.id).where(tokens.c.operator))
    }
    # The last successful say-so of each (account, pattern): who, and when.
    said: dict[tuple[int, str], tuple[str, Any]] = {}
    entries = conn.execute(
        sa.select(audit.c.actor, audit.c.at, audit.c.target, audit.c.account_id)
        .where(audit.c.action == "sender.verify", audit.c.result == "ok")
        .order_by(audit.c.id)
    )
    for actor, at, target, account_id in entries:
        if account_id is not None:
            said[(account_id, _pattern(target))] = (actor, at)
    rows = conn.execute(
        sa.select(
            senders.c.id,
            senders.c.account_id,
            senders.c.pattern,
            senders.c.dns_token,
            senders.c.created_at,
        ).where(senders.c.verified)
    ).all()
    for row in rows:
        found = said.get((row.account_id, row.pattern))
        if found is not None:
            actor, at = found
            method = "operator" if actor == "operator" or actor in operator_tokens else "tenant"
        elif row.dns_token is not None:
            method, at = "dns", row.created_at
        else:
            method, at = "unreviewed", row.created_at
        conn.execute(
            sa.update(senders).where(senders.c.id == row.id).values(method=method, verified_at=at)
        )


def downgrade() -> None:
    with op.batch_alter_table("sender_confirmations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sender_confirmations_account_id"))
    op.drop_table("sender_confirmations")
    with op.batch_alter_table("senders", schema=None) as batch_op:
        batch_op.drop_column("proof_account_id")
        batch_op.drop_column("verified_at")
        batch_op.drop_column("method")
