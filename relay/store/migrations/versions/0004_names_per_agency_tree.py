"""names unique per agency tree

Account and provider names were unique across the whole relay, so a tenant's
409 told it that a name existed in another agency's tree. Now: unique per
tree (``tree_id``: the agency at the root, itself for an agency), and an
agency's name among agencies. Touches only the accounts and providers tables.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_AGENCIES_ONLY = sa.text("parent_id IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tree_id", sa.Integer(), nullable=True))
    op.execute("UPDATE accounts SET tree_id = COALESCE(parent_id, id)")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_constraint("uq_accounts_name", type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_accounts_tree_id"), ["tree_id", "name"])
        batch_op.create_index(batch_op.f("ix_accounts_tree_id"), ["tree_id"], unique=False)
    op.create_index(
        "uq_accounts_agency_name",
        "accounts",
        ["name"],
        unique=True,
        sqlite_where=_AGENCIES_ONLY,
        postgresql_where=_AGENCIES_ONLY,
    )

    with op.batch_alter_table("providers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tree_id", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE providers SET tree_id = "
        "(SELECT a.tree_id FROM accounts a WHERE a.id = providers.account_id)"
    )
    with op.batch_alter_table("providers", schema=None) as batch_op:
        batch_op.drop_constraint("uq_providers_name", type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_providers_tree_id"), ["tree_id", "name"])
        batch_op.create_index(batch_op.f("ix_providers_tree_id"), ["tree_id"], unique=False)


def downgrade() -> None:
    # Fails (as it should) once two trees hold the same name.
    with op.batch_alter_table("providers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_providers_tree_id"))
        batch_op.drop_constraint(batch_op.f("uq_providers_tree_id"), type_="unique")
        batch_op.create_unique_constraint("uq_providers_name", ["name"])
        batch_op.drop_column("tree_id")
    op.drop_index("uq_accounts_agency_name", table_name="accounts")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_accounts_tree_id"))
        batch_op.drop_constraint(batch_op.f("uq_accounts_tree_id"), type_="unique")
        batch_op.create_unique_constraint("uq_accounts_name", ["name"])
        batch_op.drop_column("tree_id")
