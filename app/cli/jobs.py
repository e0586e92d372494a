"""`stagecraft jobs ...`: a client of a running service, built on the SDK (`stagecraft.Client`).
validate and submit are in submit.py, following a job to its end in follow.py; the rest here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli import submit as submitting
from app.cli.connect import JsonOption, connect, err, fail, out, print_fields, print_json, print_table, take, when
from app.cli.display import print_answer
from app.cli.follow import follow_to_end
from stagecraft.types import Job

jobs_cli = typer.Typer(
    help="Jobs on a running service (STAGECRAFT_URL; the key from STAGECRAFT_API_KEY or `up`'s key file).",
    no_args_is_help=True,
)
jobs_cli.command("validate", epilog=submitting.VALIDATE_EPILOG)(submitting.validate)
jobs_cli.command("submit", epilog=submitting.SUBMIT_EPILOG)(submitting.submit)

JobId = Annotated[str, typer.Argument(metavar="JOB", help="a job id (job_...)")]


def job_fields(j: Job) -> dict[str, object]:
    stage = f"{j.stage.index} {j.stage.name}" if j.stage else None
    error = f"{j.error.code}: {j.error.message}" if j.error else None
    return {"id": j.id, "name": j.name, "status": j.status, "stage": stage, "step": f"{j.step}/{j.total_steps}"} | {
        "model": j.model_id, "error": error, "attempt": j.attempt, "created": when(j.created_at),
        "started": when(j.started_at), "finished": when(j.finished_at),
    }  # fmt: skip


@jobs_cli.command("wait", epilog="Example: MODEL=$(stagecraft jobs wait $JOB -q)   # the model id, once it succeeds")
def wait(
    job_id: JobId,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress; print only the model id")] = False,
    json_: JsonOption = False,
) -> None:
    """Follow a job to its end (progress on stderr). Exits 0 if it succeeded, 1 otherwise."""
    with connect() as c:
        job = follow_to_end(c, job_id, quiet or json_)
    if json_:
        print_json(job)
    elif quiet:
        print(job.model_id)


@jobs_cli.command("list", epilog="Example: stagecraft jobs list --status running --json")
def list_jobs(
    status: Annotated[str | None, typer.Option(help="only jobs with this status")] = None,
    limit: Annotated[int, typer.Option(min=1, help="at most this many, newest first")] = 20,
    json_: JsonOption = False,
) -> None:
    """The newest jobs."""
    with connect() as c:
        found = take(c.jobs.list(status=status, limit=min(limit, 100)), limit)
    if json_:
        print_json(found)
        return
    rows = [[j.id, j.name, j.status, f"{j.step}/{j.total_steps}", j.model_id or "", when(j.created_at)] for j in found]
    print_table(["id", "name", "status", "step", "model", "created"], rows)


@jobs_cli.command(
    "show",
    epilog="Example: MODEL=$(stagecraft jobs show $JOB -q)   # or: stagecraft jobs show $JOB --json | "
    "python -c \"import json,sys; print(json.load(sys.stdin)['model_id'])\"",
)
def show(
    job_id: JobId,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="print only the model id (empty until it succeeds)")
    ] = False,
    json_: JsonOption = False,
) -> None:
    """A job: status, step, model id, error (with --json every field, the spec included)."""
    with connect() as c:
        job = c.jobs.retrieve(job_id)
    if json_:
        print_json(job)
    elif quiet:
        print(job.model_id or "")
    else:
        print_fields(job_fields(job))


@jobs_cli.command("events", epilog="Example: stagecraft jobs events $JOB --follow")
def events(
    job_id: JobId,
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="stream until the job ends")] = False,
    after: Annotated[int, typer.Option(min=0, help="only events after this seq")] = 0,
) -> None:
    """A job's events, one JSON object per line."""
    with connect() as c:
        for event in c.jobs.events(job_id, after=after, follow=follow_, limit=1000):
            print(json.dumps(event.to_dict()), flush=True)


@jobs_cli.command("cancel", epilog="Example: stagecraft jobs cancel $JOB")
def cancel(job_id: JobId, json_: JsonOption = False) -> None:
    """Cancel a job (a running one stops at its next step)."""
    with connect() as c:
        job = c.jobs.cancel(job_id)
    if json_:
        print_json(job)
    else:
        err.print(f"job {job_id}: {job.status}")


@jobs_cli.command("metrics", epilog="Example: stagecraft jobs metrics $JOB --json")
def metrics(job_id: JobId, json_: JsonOption = False) -> None:
    """Every series the job recorded (train.loss, train.lr, eval.DATA.METRIC, ...): its
    points, last step and value."""
    with connect() as c:
        result = c.jobs.metrics(job_id)
    if json_:
        print_json(result)
        return
    rows = [[name, len(pts), pts[-1][0], f"{pts[-1][1]:.6g}"] for name, pts in result.series.items() if pts]
    print_table(["series", "points", "last step", "last value"], rows)


@jobs_cli.command("plot", epilog="Example: stagecraft jobs plot $JOB --out metrics.svg   # no --out: in the terminal")
def plot(
    job_id: JobId,
    out_: Annotated[Path | None, typer.Option("--out", help="write the chart here: a .png or .svg file")] = None,
    terminal: Annotated[bool, typer.Option("--terminal", help="also draw it in the terminal (the default)")] = False,
) -> None:
    """The loss, learning rate and evaluation metrics per stage: a PNG or SVG drawn by the
    service (--out), or the loss as a text chart in the terminal."""
    fmt = out_.suffix.lower().lstrip(".") if out_ is not None else None
    if fmt is not None and fmt not in ("png", "svg"):
        fail(f"--out {out_}: the file name must end in .png or .svg", 2)
    chart = ""
    with connect() as c:
        if out_ is not None and fmt is not None:
            image = c.jobs.plot(job_id, fmt)
            try:
                out_.write_bytes(image)
            except OSError as exc:
                fail(f"cannot write {out_}: {exc.strerror or exc}")
            print(out_)
        if out_ is None or terminal:
            from app.services.plots import stage_spans, terminal_chart

            chart = terminal_chart(c.jobs.metrics(job_id).series, stage_spans(c.jobs.retrieve(job_id).spec))
    if chart:
        print(chart)


@jobs_cli.command("evaluation", epilog="Example: stagecraft jobs evaluation $JOB --json")
def evaluation(job_id: JobId, json_: JsonOption = False) -> None:
    """The evaluation report: each stage's validation metrics and the final ones."""
    with connect() as c:
        report = c.jobs.evaluation(job_id)
    if json_:
        print_json(report)
        return
    rows: list[list[Any]] = []
    for st in report.stages:
        rows += [[st.name, st.step, data, m, f"{v:.4f}"] for data, ms in st.metrics.items() for m, v in ms.items()]
    rows += [["final", "", data, m, f"{v:.4f}"] for data, ms in report.final.items() for m, v in ms.items()]
    out.print(f"job {report.job_id}: {report.status}, model {report.model_id or '-'}", highlight=False)
    print_table(["stage", "step", "data", "metric", "value"], rows)


@jobs_cli.command("checkpoints", epilog="Example: stagecraft jobs checkpoints $JOB   # ids usable as init_from")
def checkpoints(job_id: JobId, json_: JsonOption = False) -> None:
    """The job's kept checkpoints, oldest first; each id can be served or used as `init_from`."""
    with connect() as c:
        found = c.jobs.checkpoints(job_id)
    if json_:
        print_json(found)
        return
    print_table(["id", "step", "stage", "created"], [[k.id, k.step, k.stage or "", when(k.created_at)] for k in found])


def generate_remote(model_id: str, task: str | None, body: dict[str, Any]) -> None:
    """`stagecraft generate MODEL_ID ...` against the service: print the text (streamed
    piece by piece with `stream`)."""
    sampling: dict[str, Any] = {
        k: body.get(k) for k in ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop")
    }
    with connect() as c:
        if task == "translate":
            langs = {"source_lang": body["source_lang"], "target_lang": body["target_lang"]}
            t = c.models.translate(model_id, body["text"], **langs, **sampling)
            print_answer(t.translation, t.finish_reason, t.usage.completion_tokens)
        elif task == "qa":
            a = c.models.answer(model_id, body["question"], body["context"], **sampling)
            print_answer(a.answer, a.finish_reason, a.usage.completion_tokens)
        elif task == "summarize":
            s = c.models.summarize(model_id, body["text"], **sampling)
            print_answer(s.summary, s.finish_reason, s.usage.completion_tokens)
        elif not body.get("stream"):
            g = c.models.generate(model_id, body["prompt"], **sampling)
            print_answer(g.text, g.finish_reason, g.usage.completion_tokens)
        else:
            for piece in c.models.stream(model_id, body["prompt"], **sampling):
                print(piece, end="", flush=True)
            print()
