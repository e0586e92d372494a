"""fine_tunes: what OpenAI fine-tuning API jobs were asked with

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 21:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fine_tunes",
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("training_file", sa.String(length=40), nullable=False),
        sa.Column("validation_file", sa.String(length=40), nullable=True),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("suffix", sa.String(length=64), nullable=True),
        sa.Column("user_metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_fine_tunes_job_id_jobs", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_fine_tunes_tenant_id_tenants", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", name="pk_fine_tunes"),
    )
    op.create_index("ix_fine_tunes_tenant_id_job_id", "fine_tunes", ["tenant_id", "job_id"])


def downgrade() -> None:
    op.drop_index("ix_fine_tunes_tenant_id_job_id", table_name="fine_tunes")
    op.drop_table("fine_tunes")
