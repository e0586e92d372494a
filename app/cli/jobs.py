"""`stagecraft jobs submit | list | show | events | cancel`: a client of a running service
(STAGECRAFT_URL, STAGECRAFT_API_KEY)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml
from rich.console import Console
from rich.table import Table

from app.cli.display import RunDisplay
from app.client import ApiError, Client
from app.config import get_settings
from models.spec import parse_spec

jobs_cli = typer.Typer(help="Jobs on a running service (STAGECRAFT_URL, STAGECRAFT_API_KEY).", no_args_is_help=True)
err = Console(stderr=True)
out = Console()

JobId = Annotated[str, typer.Argument(metavar="JOB", help="a job id")]


@contextmanager
def client() -> Iterator[Client]:
    settings = get_settings()
    if not settings.api_key:
        err.print("[red]error:[/red] set STAGECRAFT_API_KEY (from `stagecraft keys create --tenant NAME`)")
        raise typer.Exit(2)
    c = Client(settings.url, settings.api_key)
    try:
        yield c
    except ApiError as exc:
        err.print(f"[red]error ({exc.status} {exc.code}):[/red] {exc.message}")
        for d in exc.details:
            where = d.get("loc") or (f"line {d['line']}, {d.get('field')}" if "line" in d else "")
            err.print(f"  {where}: {d.get('message') or d.get('reason')}")
        raise typer.Exit(1) from None
    except httpx.TransportError as exc:
        err.print(f"[red]error:[/red] cannot reach {settings.url}: {exc}")
        raise typer.Exit(1) from None
    finally:
        c.close()


def upload_local_files(c: Client, raw: dict[str, Any], base: Path, say: Callable[[str], None]) -> None:
    """Replace every `data.*.dataset` that names a local file with the id of its upload."""
    for ref in (raw.get("data") or {}).values():
        value = ref.get("dataset") if isinstance(ref, dict) else None
        if not isinstance(value, str):
            continue
        path = (base / value).expanduser()
        if path.is_file():
            ds = c.upload(path)
            what = "supervised records" if ds["kind"] == "records" else "lines of text"
            say(f"uploaded {value} as {ds['id']} ({ds['num_records']} {what})")
            ref["dataset"] = ds["id"]


def follow(c: Client, job: dict[str, Any]) -> str:
    """Show a job's progress from its event stream; returns its final event type."""
    final = ""
    with RunDisplay(parse_spec(job["spec"]), err) as display:
        for event in c.events(job["id"]):
            display(event)
            final = event["type"]
            if final == "job.failed":
                err.print(f"[red]failed ({event['data'].get('code')}):[/red] {event['data'].get('message')}")
    return final


@jobs_cli.command("submit")
def submit(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="job spec, YAML or JSON")],
    wait: Annotated[bool, typer.Option("--wait", help="follow the job to its end with a progress bar")] = False,
) -> None:
    """Submit a spec. Datasets given as local file paths (relative to the spec) are uploaded first."""
    try:
        raw = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        err.print(f"[red]error:[/red] cannot read {spec_path}: {exc}")
        raise typer.Exit(2) from None
    if not isinstance(raw, dict):
        err.print(f"[red]error:[/red] {spec_path} is not a mapping")
        raise typer.Exit(2)
    with client() as c:
        upload_local_files(c, raw, spec_path.resolve().parent, err.print)
        job = c.request("POST", "/v1/jobs", json=raw, headers={"Idempotency-Key": uuid.uuid4().hex})
        print(job["id"])
        if not wait:
            return
        try:
            final = follow(c, job)
        except KeyboardInterrupt:
            err.print(f"\nstopped following; the job goes on (stagecraft jobs events {job['id']} --follow)")
            raise typer.Exit(130) from None
        job = c.request("GET", f"/v1/jobs/{job['id']}")
    if final != "job.succeeded":
        err.print(f"job {job['id']} ended {job['status']}")
        raise typer.Exit(1)
    err.print(f"job {job['id']} succeeded: model {job['model_id']}")


@jobs_cli.command("list")
def list_jobs(
    status: Annotated[str | None, typer.Option(help="only jobs with this status")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
) -> None:
    """The newest jobs."""
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    with client() as c:
        page = c.request("GET", "/v1/jobs", params=params)
    table = Table("id", "name", "status", "progress", "created")
    for j in page["data"]:
        table.add_row(j["id"], j["name"], j["status"], f"{j['progress']:.0%}", j["created_at"][:19])
    out.print(table)


@jobs_cli.command("show")
def show(job_id: JobId) -> None:
    """A job as JSON."""
    with client() as c:
        print(json.dumps(c.request("GET", f"/v1/jobs/{job_id}"), indent=2))


@jobs_cli.command("events")
def events(
    job_id: JobId,
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="stream until the job ends")] = False,
    after: Annotated[int, typer.Option(min=0, help="only events after this seq")] = 0,
) -> None:
    """A job's events, one JSON object per line."""
    with client() as c:
        if follow_:
            for event in c.events(job_id, after):
                print(json.dumps(event), flush=True)
            return
        while True:
            page = c.request("GET", f"/v1/jobs/{job_id}/events", params={"after": after, "limit": 1000})
            for event in page["data"]:
                print(json.dumps(event))
            if not page["has_more"]:
                return
            after = int(page["next_cursor"])


@jobs_cli.command("cancel")
def cancel(job_id: JobId) -> None:
    """Cancel a job (a running one stops at its next step)."""
    with client() as c:
        job = c.request("POST", f"/v1/jobs/{job_id}/cancel")
    err.print(f"job {job_id}: {job['status']}")


TASK_ROUTES = {
    "translate": ("translate", "translation"),
    "qa": ("answer", "answer"),
    "summarize": ("summarize", "summary"),
}


def generate_remote(model_id: str, task: str | None, body: dict[str, Any]) -> None:
    """`stagecraft generate MODEL_ID ...` against the service: print the text (streamed
    token by token with `stream` in the body)."""
    with client() as c:
        if task is not None:
            route, key = TASK_ROUTES[task]
            print(c.request("POST", f"/v1/models/{model_id}/{route}", json=body)[key])
        elif not body.get("stream"):
            print(c.request("POST", f"/v1/models/{model_id}/generate", json=body)["text"])
        else:
            for piece in c.generate_stream(model_id, body):
                print(piece, end="", flush=True)
            print()
