"""Strict pydantic scalars and the base of every spec section: a spec says exactly what it
means (`true` is not 1, `"yes"` is not true, unknown fields are errors). Torch-free."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Strict


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("Input should be a number, not a boolean")
    return value


StrictInt = Annotated[int, Strict()]  # true/false are not 1/0 here
StrictBool = Annotated[bool, Strict()]  # "yes" and 1 are not true here
Number = Annotated[float, BeforeValidator(_no_bool)]  # ints and numeric strings (YAML's 1e-3) are fine


class StrictModel(BaseModel):
    """A spec section: unknown fields are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
