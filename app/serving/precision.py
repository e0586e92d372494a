"""Which precision a generation request is served in, and what a model shows of it.

The operator picks a default (STAGECRAFT_INFERENCE_QUANTIZATION: none, the model's own fp32
weights, or int8 / int4 / nf4 weight-only: models/layers/quantized.py) and what else requests may
ask for (STAGECRAFT_INFERENCE_ALLOWED_PRECISIONS); a request names one in `precision`. The
model cache keeps a model loaded once per precision it was asked in (app/serving/engine.py).
Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import Invalid
from app.services import adapters
from app.services.catalog import EXPORTS
from app.storage import get_store
from app.tables import Checkpoint, Model

PRECISIONS = ("fp32", "int8", "int4", "nf4")  # models.layers.quantized.PRECISIONS, without torch


def default(settings: Settings) -> str:
    q = settings.inference_quantization
    return "fp32" if q == "none" else q


def allowed(settings: Settings) -> list[str]:
    """The precisions requests may ask for, the default among them, in PRECISIONS order."""
    named = {p for p in settings.inference_allowed_precisions.replace(" ", "").split(",") if p}
    return [p for p in PRECISIONS if p in named or p == default(settings)]


def choose(settings: Settings, asked: str | None, loc: str = "body.precision") -> str:
    """The precision a request is served in: the default, or `asked` if the operator allows it
    (422 naming `loc` otherwise)."""
    if asked is None:
        return default(settings)
    ok = allowed(settings)
    if asked not in ok:
        message = f"precision '{asked}' is not served here; allowed: {', '.join(ok)}"
        raise Invalid(message, [{"loc": loc, "message": message}])
    return asked


def served_directory(session: Session, settings: Settings, found: Model | Checkpoint) -> Path | None:
    """The folder the model cache would load for a model row (an adapter's: its base's) or a
    checkpoint (its export), as app.serving.requests finds it; nothing is downloaded or exported.
    None when it cannot be told without that."""
    if isinstance(found, Checkpoint):
        return settings.jobs_dir / found.job_id / EXPORTS / found.id
    directory = get_store(settings).path(found.path)
    if not adapters.is_adapter(directory):
        return directory
    return adapters.base_dir(directory)
