"""The approval queue.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tether_approvals",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("decision_id", sa.String(32), nullable=False),
        sa.Column("session_id", sa.String(255), nullable=False),
        sa.Column("agent", sa.String(255), nullable=False),
        sa.Column("user_id", sa.String(255)),
        sa.Column("tenant", sa.String(255)),
        sa.Column("tool", sa.String(255), nullable=False),
        sa.Column("call_key", sa.String(32), nullable=False),
        sa.Column("request", sa.Text, nullable=False),
        sa.Column("approvers", sa.Text),
        sa.Column("for_session", sa.Boolean, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("expires_us", sa.BigInteger, nullable=False),
        sa.Column("answered_us", sa.BigInteger),
        sa.Column("answered_by", sa.String(255)),
        sa.Column("comment", sa.Text),
        sa.Column("scope", sa.String(16)),
        sa.Column("edited_args", sa.Text),
        sa.Column("consumed_us", sa.BigInteger),
    )
    op.create_index("ix_tether_approvals_status", "tether_approvals", ["status"])
    op.create_index("ix_tether_approvals_call", "tether_approvals", ["session_id", "call_key"])


def downgrade() -> None:
    op.drop_index("ix_tether_approvals_call", "tether_approvals")
    op.drop_index("ix_tether_approvals_status", "tether_approvals")
    op.drop_table("tether_approvals")
