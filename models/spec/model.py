"""The `model` section of the job spec: one member per family (`arch`), a discriminated union
made from the family registry (a spec without `arch` is the default family's); each
family's section is declared in its config (models/families/<arch>/config.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Protocol, Union

from pydantic import Discriminator, Tag

from models.families import DEFAULT, FAMILIES
from models.families.family import InitFrom


class ModelSection(Protocol):
    """What every family's spec section has."""

    arch: str
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    dropout: float
    train_block_size: int | None
    init_from: InitFrom | None

    def model_dump(self, **kwargs: Any) -> dict[str, Any]: ...


def training_block(m: ModelSection, model_block: int) -> int:
    """The window a run trains and measures on: text packed into blocks of this many tokens,
    records cut at it. `train_block_size` (at most the model's context) or the model's own
    `block_size` (the base's with init_from); the model keeps its context either way."""
    return model_block if m.train_block_size is None else min(m.train_block_size, model_block)


def _arch(value: Any) -> str:
    arch = value.get("arch", DEFAULT) if isinstance(value, dict) else getattr(value, "arch", DEFAULT)
    return arch if arch in FAMILIES else DEFAULT  # an unknown arch: reported at model.arch


if TYPE_CHECKING:
    AnyModelSpec = ModelSection
else:
    AnyModelSpec = Annotated[
        Union[tuple(Annotated[f.spec, Tag(f.arch)] for f in FAMILIES.values())],  # noqa: UP007
        Discriminator(_arch),
    ]
DEFAULT_MODEL: Any = FAMILIES[DEFAULT].spec  # `model` when a spec has none
