"""Keyed fingerprints of the sensitive values each session has seen, for session isolation.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tether_sensitive_values",
        sa.Column("fingerprint", sa.String(32), primary_key=True),
        sa.Column("session_id", sa.String(255), primary_key=True),
        sa.Column("tenant", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("first_seen_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tether_sensitive_values")
