"""`stagecraft jobs validate | submit`: a spec file with local data files, checked completely
before anything is uploaded, and identical datasets reused rather than uploaded again.

Order: the spec's fields and cross-field checks (models.spec.job), every local data file parsed
as the service will (all their bad lines at once), then POST /v1/jobs/validate with the
datasets already on the service (same sha256) in place of their files. Data names whose
files are still to be uploaded are the only errors the service may report that are not
real (their datasets do not exist yet); those are set aside, everything else is reported.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any

import typer

import stagecraft
from app.cli.connect import JsonOption, connect, err, print_json
from app.cli.datasets import counted
from app.cli.follow import follow_to_end
from app.cli.specfile import LocalData, checked_spec, kind_errors, local_data, print_spec_errors, read_raw
from stagecraft.types import Dataset, Validation

SpecPath = Annotated[Path, typer.Argument(metavar="SPEC", help="job spec, YAML or JSON")]


def existing_by_sha(c: stagecraft.Client) -> dict[str, Dataset]:
    """The tenant's datasets by content hash (the newest of equal ones)."""
    found: dict[str, Dataset] = {}
    for d in c.datasets.list(limit=100):
        if d.sha256:
            found.setdefault(d.sha256, d)
    return found


def prepared(path: Path, c: stagecraft.Client) -> tuple[dict[str, Any], dict[str, LocalData], Validation]:
    """Check everything; returns the spec with reused dataset ids filled in, the local files
    still to upload, and the service's validation. Exits 2 on any problem."""
    raw = read_raw(path)
    spec = checked_spec(raw, path)
    local = local_data(raw, path.resolve().parent)
    problems = kind_errors(spec, local)
    if problems:
        print_spec_errors(path, problems)
        raise typer.Exit(2)
    raw = copy.deepcopy(raw)
    have = existing_by_sha(c) if local else {}
    pending: dict[str, LocalData] = {}
    for name, data in local.items():
        reuse = have.get(data.sha256)
        if reuse is not None and reuse.kind == data.kind:
            err.print(f"data.{name}: reusing {reuse.id} for {data.given} (already uploaded: same sha256)")
            raw["data"][name]["dataset"] = reuse.id
        else:
            pending[name] = data
    try:
        validation = c.jobs.validate(raw)
    except stagecraft.UnprocessableEntityError as exc:
        unreal = {f"data.{name}.dataset" for name in pending}
        real = [d for d in exc.details if d.get("loc") not in unreal]
        if exc.code != "invalid_spec" or real:
            print_spec_errors(f"{path} (checked by the service)", real or [{"loc": "(spec)", "message": exc.message}])
            raise typer.Exit(2) from None
        validation = _estimates_unknown()
    return raw, pending, validation


def _estimates_unknown() -> Validation:
    return Validation.model_validate(
        {"valid": True, "estimates": {"parameters": 0, "tokens": 0, "total_steps": 0, "flops": 0.0}}
    )


def upload_pending(c: stagecraft.Client, raw: dict[str, Any], pending: dict[str, LocalData]) -> None:
    for name, data in pending.items():
        d = c.datasets.upload(data.path)
        err.print(f"data.{name}: uploaded {data.given} as {d.id} ({counted(d)})")
        raw["data"][name]["dataset"] = d.id


def validate(spec_path: SpecPath, json_: JsonOption = False) -> None:
    """Check a spec completely without running it or uploading anything: its fields, its
    local data files (every bad line), then the service's checks; prints the estimates."""
    with connect() as c:
        _, pending, validation = prepared(spec_path, c)
    if json_:
        print_json(validation)
        return
    est = validation.estimates
    if pending and not est.total_steps:
        err.print("valid (estimates come once its data files are uploaded)")
        return
    err.print(
        f"valid: {est.parameters:,} parameters, {est.total_steps:,} steps, {est.tokens:,} tokens, {est.flops:.3g} FLOPs"
    )


def submit(
    spec_path: SpecPath,
    wait: Annotated[bool, typer.Option("--wait", help="follow the job to its end with progress bars")] = False,
    json_: JsonOption = False,
) -> None:
    """Submit a spec; prints the job id. Data given as local file paths (relative to the spec)
    are uploaded first, unless an identical dataset (same sha256) is already there."""
    with connect() as c:
        raw, pending, _ = prepared(spec_path, c)
        upload_pending(c, raw, pending)
        job = c.jobs.create(raw)
        if json_:
            print_json(job)
        else:
            print(job.id, flush=True)
        if wait:
            follow_to_end(c, job.id)


VALIDATE_EPILOG = "Example: stagecraft jobs validate examples/multistep.yaml"
SUBMIT_EPILOG = "Example: JOB=$(stagecraft jobs submit examples/multistep.yaml); stagecraft jobs wait $JOB"
