"""What each objective reads and the preference objective's own checks: `data_kind_errors`
(the one check of data kinds, for the API, the CLI and the run) and `objective_errors` (a
phase's objective agrees with its loss; a reference only where a loss reads one; preference
objectives in one process)."""

from __future__ import annotations

from collections.abc import Mapping

from models.spec.job import JobSpec
from models.spec.parts import training_parts
from models.spec.preference import PREFERENCE_LOSSES, REFERENCE_FREE

# The data kinds (models.data.records.DataFile.kind) each objective trains on.
OBJECTIVE_DATA = {"pretrain": ("text", "records"), "finetune": ("records",), "preference": ("preference",)}
NEEDS = {
    "pretrain": "a text corpus or supervised records",
    "finetune": "supervised records",
    "preference": "preference records ({prompt, chosen, rejected} or {input, preferred_output, non_preferred_output})",
}
KIND_NAMES = {"text": "a text corpus", "records": "supervised records", "preference": "preference records"}


def data_kind_errors(spec: JobSpec, kinds: Mapping[str, str]) -> list[dict[str, str]]:
    """Objectives on data of the wrong kind: a finetune objective needs supervised records, a
    preference objective preference records, and neither those nor pretraining reads the other.
    `kinds`: the kind ("text", "records" or "preference") of each data name where the caller
    knows it (the API from the tenant's datasets, the CLI from local files, the run from the
    data it loaded)."""
    errors = []
    for p in training_parts(spec):
        objective, kind = p.part.objective, kinds.get(p.part.data)
        if kind is not None and kind not in OBJECTIVE_DATA[objective]:
            what = KIND_NAMES.get(kind, kind)
            message = f"a {objective} objective needs {NEEDS[objective]}, but '{p.part.data}' is {what}"
            errors.append({"loc": f"{p.loc}.data", "message": message})
    return errors


def objective_errors(spec: JobSpec) -> list[dict[str, str]]:
    """A phase's `objective` and `loss` agree; `reference` and `precompute_reference` only on a
    preference objective whose loss reads a reference; preference objectives run in one process."""
    errors: list[dict[str, str]] = []

    def err(loc: str, message: str) -> None:
        errors.append({"loc": loc, "message": message})

    for p in training_parts(spec):
        preference, loss = p.part.objective == "preference", p.part.loss.type
        if preference and loss not in PREFERENCE_LOSSES:
            err(f"{p.loc}.loss.type", f"a preference objective takes a loss of {', '.join(PREFERENCE_LOSSES)}")
        elif not preference and loss in PREFERENCE_LOSSES:
            err(f"{p.loc}.loss.type", f"{loss} is a preference loss: set objective: preference")
        extra = [f for f in ("reference", "precompute_reference") if getattr(p.part, f, None)]
        for field in extra:
            if not preference:
                err(f"{p.loc}.{field}", "only a preference objective has a reference model")
            elif loss in REFERENCE_FREE:
                err(f"{p.loc}.{field}", f"the {loss} loss reads no reference model")
        if preference and spec.resources.processes > 1:
            msg = f"{p.loc} is a preference objective, which trains in one process: set resources.processes to 1"
            err("resources.processes", msg)
    return errors
