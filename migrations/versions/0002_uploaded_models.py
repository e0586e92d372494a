"""uploaded models: models.job_id may be null

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 20:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.alter_column("job_id", existing_type=sa.String(length=40), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM models WHERE job_id IS NULL")
    with op.batch_alter_table("models") as batch:
        batch.alter_column("job_id", existing_type=sa.String(length=40), nullable=False)
