"""The real arguments of a pending approval request, encrypted, for the people who answer it.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tether_approvals", sa.Column("sealed_args", sa.Text))  # nullable: no table rewrite


def downgrade() -> None:
    with op.batch_alter_table("tether_approvals") as batch:  # SQLite rebuilds the table
        batch.drop_column("sealed_args")
