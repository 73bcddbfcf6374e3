"""MCP tool pins: each server's tool definitions as first seen or approved.

Revision ID: 0010
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tether_mcp_pins",
        sa.Column("server", sa.String(255), primary_key=True),
        sa.Column("tool", sa.String(255), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("seen_digest", sa.String(64), nullable=False),
        sa.Column("definition", sa.Text, nullable=False),
        sa.Column("findings", sa.Text, nullable=False),
        sa.Column("first_seen_us", sa.BigInteger, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
        sa.Column("approved_by", sa.String(255)),
        sa.Column("approved_us", sa.BigInteger),
    )


def downgrade() -> None:
    op.drop_table("tether_mcp_pins")
