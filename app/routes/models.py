"""/v1/models: finished models, and checkpoints by id (both usable as `init_from`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.deps import ReadSession, TenantDep
from app.errors import NotFound
from app.routes import ERRORS
from app.schemas import CheckpointOut, ModelOut, Page
from app.services import metrics, models

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERRORS)


@router.get("")
def list_models(
    tenant_id: TenantDep,
    session: ReadSession,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="cursor: the last id of the previous page")] = None,
) -> Page[ModelOut]:
    rows, more = models.list_page(session, tenant_id, limit, after)
    return Page(data=[models.to_out(m) for m in rows], has_more=more, next_cursor=rows[-1].id if more else None)


@router.get("/{model_id}")
def get_model(model_id: str, tenant_id: TenantDep, session: ReadSession) -> ModelOut | CheckpointOut:
    """A model id (`model_...`) or a checkpoint id (`ckpt_...`)."""
    if model_id.startswith("ckpt_"):
        found = models.checkpoint_of(session, tenant_id, model_id)
        if found is None:
            raise NotFound(f"no model or checkpoint '{model_id}'")
        return metrics.checkpoint_out(found[0])
    return models.to_out(models.get(session, tenant_id, model_id))
