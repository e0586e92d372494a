"""parse_spec reports the name checks even when fields are invalid, in one SpecError."""

from __future__ import annotations

import json

import pytest

from models.errors import SpecError
from models.spec import parse_spec
from tests.conftest import BASE_SPEC


def test_field_errors_and_unknown_data_names_come_together() -> None:
    raw = json.loads(json.dumps(BASE_SPEC))
    raw["seed"] = -1
    raw["stages"][0]["data"] = "missing"
    raw["stages"][2]["phases"][0]["data"] = "gone"
    raw["tokenizer"]["train_on"] = ["nope"]
    with pytest.raises(SpecError) as caught:
        parse_spec(raw)
    locs = [e["loc"] for e in caught.value.errors]
    assert "seed" in locs
    assert {"stages.0.data", "stages.2.phases.0.data", "tokenizer.train_on.0"} <= set(locs)
    assert len(locs) == len(set(locs)), "no error twice"


def test_a_reference_already_reported_as_a_field_error_is_not_repeated() -> None:
    raw = json.loads(json.dumps(BASE_SPEC))
    raw["seed"] = -1
    raw["stages"][0]["data"] = "Not A Name!"  # invalid as a name (a field error) and unknown
    with pytest.raises(SpecError) as caught:
        parse_spec(raw)
    assert [e["loc"] for e in caught.value.errors].count("stages.0.data") == 1
