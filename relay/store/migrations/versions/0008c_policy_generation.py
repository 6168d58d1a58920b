"""policy_generation: one counter that moves with every write the message path decides by

The SMTP front caches per account what policy, suppression and suspension
decide (``relay.store.generation``) and drops the cache when this counter
moves. Triggers move it in the writer's own transaction, whoever the writer
is (service layer, webhooks, reputation monitor, SQL by hand): on accounts
(the columns policy reads), senders, providers (the columns routing reads)
and suppressions (a row added or removed).

A later migration that rebuilds one of these tables on SQLite (batch mode
with recreate) drops its triggers: it must create them again
(``create_triggers``); tests/test_policy_cache.py checks every one at head.

Revision ID: 0008c
Revises: 0007c
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008c"
down_revision: str | None = "0007c"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table -> the columns whose update changes a decision (None: any insert or
# delete counts, and an update of these columns).
WATCHED: dict[str, tuple[str, ...]] = {
    "accounts": (
        "name",
        "parent_id",
        "unverified_policy",
        "default_provider_id",
        "subaccount_provider_id",
        "assigned_provider_id",
        "suspended_at",
        "suspended_reason",
        "share_suppressions",
        "unsubscribe",
    ),
    "senders": ("account_id", "pattern", "verified"),
    "providers": ("name", "account_id", "tree_id", "options", "domain"),
    "suppressions": ("account_id", "address"),
}
_BUMP = "UPDATE policy_generation SET value = value + 1 WHERE id = 1"


def create_triggers(table: str) -> None:
    """The triggers that move the counter on writes to ``table``."""
    columns = ", ".join(WATCHED[table])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"CREATE TRIGGER policy_generation_{table} AFTER INSERT OR DELETE OR UPDATE OF "
            f"{columns} ON {table} FOR EACH STATEMENT EXECUTE FUNCTION policy_generation_bump()"
        )
        return
    for event in ("INSERT", "DELETE", f"UPDATE OF {columns}"):
        name = f"policy_generation_{table}_{event.split()[0].lower()}"
        op.execute(f"CREATE TRIGGER {name} AFTER {event} ON {table} BEGIN {_BUMP}; END")


def drop_triggers(table: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS policy_generation_{table} ON {table}")
        return
    for event in ("insert", "delete", "update"):
        op.execute(f"DROP TRIGGER IF EXISTS policy_generation_{table}_{event}")


def upgrade() -> None:
    op.create_table(
        "policy_generation",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_generation")),
    )
    op.execute("INSERT INTO policy_generation (id, value) VALUES (1, 0)")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION policy_generation_bump() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN {_BUMP}; RETURN NULL; END $$"
        )
    for table in WATCHED:
        create_triggers(table)


def downgrade() -> None:
    for table in WATCHED:
        drop_triggers(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS policy_generation_bump()")
    op.drop_table("policy_generation")
