"""`stagecraft datasets upload | list | show | delete`: the datasets of a running service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli.connect import JsonOption, connect, err, print_fields, print_json, print_table, take, when
from stagecraft.types import Dataset

datasets_cli = typer.Typer(
    help="Datasets on a running service (STAGECRAFT_URL; the key from STAGECRAFT_API_KEY or `up`'s key file).",
    no_args_is_help=True,
)
DatasetId = Annotated[str, typer.Argument(metavar="DATASET", help="a dataset id (ds_...)")]


def row(d: Dataset) -> list[object]:
    return [d.id, d.name, d.kind, d.num_records, d.bytes, (d.sha256 or "")[:12], when(d.created_at)]


COLUMNS = ["id", "name", "kind", "records", "bytes", "sha256", "created"]
NOUNS = {"text": "texts", "records": "supervised records", "preference": "preference records"}


def counted(d: Dataset) -> str:
    """'3000 supervised records', '900 preference records', '20000 texts'."""
    return f"{d.num_records} {NOUNS.get(d.kind, d.kind + ' records')}"


@datasets_cli.command("upload", epilog="Example: stagecraft datasets upload examples/data/corpus.txt --name corpus")
def upload(
    path: Annotated[
        Path, typer.Argument(metavar="FILE", help=".txt corpus, or .jsonl of {text}, supervised or preference records")
    ],
    name: Annotated[str | None, typer.Option(help="the dataset's name (default: the file name)")] = None,
    json_: JsonOption = False,
) -> None:
    """Upload a file; the service checks every line first (a bad file lists each bad line).
    Prints the new dataset's id."""
    with connect() as c:
        d = c.datasets.upload(path, name)
    if json_:
        print_json(d)
        return
    err.print(f"uploaded {path} ({counted(d)})")
    print(d.id)


@datasets_cli.command("list", epilog="Example: stagecraft datasets list --json")
def list_datasets(
    limit: Annotated[int, typer.Option(min=1, help="at most this many, newest first")] = 50,
    json_: JsonOption = False,
) -> None:
    """Your datasets, newest first."""
    with connect() as c:
        found = take(c.datasets.list(limit=min(limit, 100)), limit)
    if json_:
        print_json(found)
    else:
        print_table(COLUMNS, [row(d) for d in found])


@datasets_cli.command("show", epilog="Example: stagecraft datasets show ds_0123abcd --json")
def show(dataset_id: DatasetId, json_: JsonOption = False) -> None:
    """One dataset: name, kind, format, records, size, sha256."""
    with connect() as c:
        d = c.datasets.get(dataset_id)
    if json_:
        print_json(d)
        return
    print_fields(
        {"id": d.id, "name": d.name, "kind": d.kind, "format": d.format, "records": d.num_records}
        | {"bytes": d.bytes, "sha256": d.sha256, "created": when(d.created_at)}
    )


@datasets_cli.command("delete", epilog="Example: stagecraft datasets delete ds_0123abcd")
def delete(dataset_id: DatasetId, json_: JsonOption = False) -> None:
    """Delete a dataset (refused while an unfinished job uses it)."""
    with connect() as c:
        result = c.datasets.delete(dataset_id)
    if json_:
        print_json(result)
    else:
        err.print(f"deleted {result.id}")
