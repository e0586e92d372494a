"""Reading a job spec file and checking it and its data files on this machine, printing
every problem on its own line (field path, or file and line number) before exiting 2."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import typer
import yaml
from rich.console import Console

from models.data.records import load_file
from models.errors import DataError, SpecError
from models.spec import JobSpec, data_kind_errors, parse_spec

err = Console(stderr=True, highlight=False, soft_wrap=True)
DATA_SUFFIXES = (".txt", ".jsonl")


def _exit(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def read_raw(path: Path) -> dict[str, Any]:
    """The decoded YAML/JSON mapping of a spec file."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        _exit(f"cannot read {path}: {exc.strerror}")
    except yaml.YAMLError as exc:
        _exit(f"{path} is not valid YAML/JSON: {exc}")
    if not isinstance(raw, dict):
        _exit(f"{path} is not a mapping of spec fields")
    return raw


def print_spec_errors(path: Path | str, errors: list[dict[str, Any]]) -> None:
    err.print(f"[red]error:[/red] invalid spec {path} ({len(errors)} error(s)):")
    for e in errors:
        err.print(f"  {e['loc']}: {e['message']}")


def checked_spec(raw: dict[str, Any], path: Path) -> JobSpec:
    """parse_spec, or every field and cross-field error printed and exit 2."""
    try:
        return parse_spec(raw)
    except SpecError as exc:
        print_spec_errors(path, exc.errors)
        raise typer.Exit(2) from None


def print_data_error(exc: DataError) -> None:
    """Every bad line of a data file on its own line."""
    err.print(f"[red]error:[/red] {exc.source}: {exc.total} bad line(s)")
    for issue in exc.issues:
        where = "(file)" if issue["line"] == 0 else f"line {issue['line']}"
        err.print(f"  {exc.source} {where}: {issue['field']}: {issue['reason']}")
    if exc.total > len(exc.issues):
        err.print(f"  ... and {exc.total - len(exc.issues)} more")


@dataclass(frozen=True)
class LocalData:
    """A `data.NAME.dataset` that names a file on this machine."""

    name: str
    given: str  # the path as the spec writes it
    path: Path
    kind: str
    sha256: str


def local_data(raw: dict[str, Any], base: Path) -> dict[str, LocalData]:
    """Parse every data file the spec names (paths relative to `base`), like the service will;
    print the errors of all of them at once and exit 2 if any is bad."""
    found: dict[str, LocalData] = {}
    bad = 0
    for name, ref in (raw.get("data") or {}).items():
        value = ref.get("dataset") if isinstance(ref, dict) else None
        if not isinstance(value, str):
            continue
        path = (base / value).expanduser()
        if not path.is_file():
            if value.lower().endswith(DATA_SUFFIXES):
                err.print(f"[red]error:[/red] data.{name}.dataset: no such file {path}")
                bad += 1
            continue  # a dataset id
        try:
            parsed = load_file(path)
        except DataError as exc:
            print_data_error(exc)
            bad += 1
            continue
        found[name] = LocalData(name, value, path, parsed.kind, hashlib.sha256(path.read_bytes()).hexdigest())
    if bad:
        raise typer.Exit(2)
    return found


def kind_errors(spec: JobSpec, local: dict[str, LocalData]) -> list[dict[str, str]]:
    """An objective on a local file of the wrong kind (a finetune objective on a text corpus, a
    preference stage on anything but preference records): models.spec.data_kind_errors, which
    the service runs for uploaded ones."""
    return data_kind_errors(spec, {name: data.kind for name, data in local.items()})
