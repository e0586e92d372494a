"""Following a job on a running service to its end, with progress bars: `stagecraft jobs wait`
and `stagecraft jobs submit --wait` (app/cli/jobs.py and app/cli/submit.py) share it."""

from __future__ import annotations

import typer

import stagecraft
from app.cli.connect import err
from app.cli.display import RunDisplay
from models.errors import SpecError
from models.spec import parse_spec
from stagecraft.types import Job


def follow_to_end(c: stagecraft.Client, job_id: str, quiet: bool = False) -> Job:
    """Follow a job (progress bars on stderr unless quiet) to its end; exit 1 unless it succeeded."""
    job = c.jobs.retrieve(job_id)
    try:
        if quiet:
            job = c.jobs.wait(job_id)
        else:
            try:
                spec = parse_spec(job.spec)
            except SpecError:  # a spec this CLI does not know (a newer server): events as lines
                job = c.jobs.wait(job_id, on_event=lambda e: err.print(e.type, e.step, highlight=False))
            else:
                with RunDisplay(spec, err) as display:
                    job = c.jobs.wait(job_id, on_event=lambda e: display(e.to_dict()))
    except KeyboardInterrupt:
        err.print(f"\nstopped following; the job goes on (stagecraft jobs wait {job_id})")
        raise typer.Exit(130) from None
    if job.status != "succeeded":
        reason = f" ({job.error.code}: {job.error.message})" if job.error else ""
        err.print(f"[red]job {job.id} ended {job.status}[/red]{reason}", highlight=False)
        raise typer.Exit(1)
    if not quiet:
        err.print(f"job {job.id} succeeded: model {job.model_id}", highlight=False)
    return job
