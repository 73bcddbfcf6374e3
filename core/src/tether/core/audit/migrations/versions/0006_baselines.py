"""What is normal for each agent (and tenant), learned from the audit by `tether baseline learn`.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tether_baselines",
        sa.Column("agent", sa.String(255), primary_key=True),
        sa.Column("tenant", sa.String(255), primary_key=True),
        sa.Column("learned_us", sa.BigInteger, nullable=False),
        sa.Column("sessions", sa.Integer, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tether_baselines")
