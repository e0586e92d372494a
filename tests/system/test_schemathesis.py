"""The OpenAPI document against the service it describes: schemathesis generates requests for
every operation (a few examples each, valid and not) against a real `stagecraft up`, and
every answer must be no 5xx, a status the document lists, and a body its schema allows; a
method a path lacks is a 405 whose `Allow` lists the methods the document gives that path.
(Our own fuzzing of names, ids and outages: tests/app/api/test_fuzz.py.)"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.system.processes import Proc, base_env, free_port, stagecraft, wait_ready
from tests.system.stack import PROCS

EXAMPLES = 8  # per operation: the suite stays within a minute or two
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    root = tmp_path_factory.mktemp("schemathesis")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = Proc("up-schemathesis", [*stagecraft(), "up", "--port", str(port), "--data-dir", str(root / "data")],
                base_env(url=url), root)  # fmt: skip
    PROCS.append(proc)
    proc.start()
    try:
        wait_ready(url, [proc])
        yield url, (root / "data" / "api_key").read_text().strip()
    finally:
        proc.stop()


def test_the_api_does_what_its_document_says(up: tuple[str, str]) -> None:
    """Every operation, a few generated cases each; all findings are collected, then reported."""
    url, key = up
    api = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures: list[str] = []
    operations = 0
    statuses: dict[int, int] = {}
    for found in api.get_all_operations():
        operation = found.ok()  # type: ignore[union-attr]  # an invalid operation raises here, failing the test
        operations += 1

        cases = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
        )

        @given(case=cases)
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
        def run(case: Any) -> None:
            response = case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS, timeout=30)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        try:
            run()
        except Exception as exc:  # a failed check: keep going, report them all
            failures.append(f"{operation.label}: {str(exc)[:600]}")
    assert operations > 20 and sum(statuses.values()) > 2 * operations, statuses
    print(f"schemathesis: {operations} operations, answers by status {sorted(statuses.items())}")
    assert not failures, "\n\n".join(failures)


def test_every_405_lists_the_methods_of_its_path(up: tuple[str, str]) -> None:
    """Each documented path, its parameters ids of no object, with each method it lacks."""
    url, key = up
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    patterns = {t: re.compile(re.sub(r"\{[^}]+\}", "[^/]+", t)) for t in paths}
    mismatches = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        for template in paths:
            path = template.replace("{", "x_").replace("}", "")
            declared = {m.upper() for t, ops in paths.items() if patterns[t].fullmatch(path) for m in ops}
            for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - declared):
                r = http.request(method, path)
                allow = set(r.headers.get("allow", "").split(", ")) - {""}
                if r.status_code != 405 or allow != declared:
                    mismatches.append(
                        f"{method} {path}: {r.status_code}, Allow {sorted(allow)}, not {sorted(declared)}"
                    )
    assert not mismatches, "\n".join(mismatches)
