"""Agent credentials: hashed secrets bound to policy agents.

Revision ID: 0008
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tether_credentials",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("agent", sa.String(255), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("tenants", sa.Text),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("expires_us", sa.BigInteger),
        sa.Column("revoked_us", sa.BigInteger),
    )
    op.create_index("ix_tether_credentials_agent", "tether_credentials", ["agent"])


def downgrade() -> None:
    op.drop_index("ix_tether_credentials_agent", "tether_credentials")
    op.drop_table("tether_credentials")
