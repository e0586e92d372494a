"""What every client command shares: a `stagecraft.Client` whose errors become one clear
message and an exit status, and the two ways of printing objects (a table or `--json`).

The client finds the service as the SDK does: STAGECRAFT_URL (default http://127.0.0.1:8000)
and STAGECRAFT_API_KEY, else the key file `stagecraft up` writes (DATA_DIR/api_key).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

import stagecraft
from stagecraft.types import APIObject

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

T = TypeVar("T")

JsonOption = Annotated[bool, typer.Option("--json", help="print the result as JSON (for scripts)")]


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def detail_line(d: dict[str, Any]) -> str:
    """One error detail: a spec field ({loc, message}) or a data line ({line, field, reason})."""
    if "line" in d:
        return f"line {d['line']}: {d.get('field', '')}: {d.get('reason') or d.get('message')}"
    return f"{d.get('loc', '')}: {d.get('message') or d.get('reason')}"


@contextmanager
def connect() -> Iterator[stagecraft.Client]:
    """A client of the service; any SDK error exits with its message (2 for configuration)."""
    try:
        client = stagecraft.Client()
    except stagecraft.ConfigurationError as exc:
        fail(str(exc), 2)
    try:
        yield client
    except stagecraft.APIError as exc:
        err.print(f"[red]error ({exc.status_code} {exc.code}):[/red] {exc.message}", highlight=False)
        for d in exc.details:
            err.print(f"  {detail_line(d)}", highlight=False)
        raise typer.Exit(1) from None
    except stagecraft.APIConnectionError as exc:
        fail(f"cannot reach {client.url} ({exc}); is `stagecraft up` running? (STAGECRAFT_URL)")
    finally:
        client.close()


def as_data(obj: Any) -> Any:
    if isinstance(obj, APIObject):
        return obj.to_dict()
    if isinstance(obj, list | tuple):
        return [as_data(o) for o in obj]
    return obj


def print_json(obj: Any) -> None:
    print(json.dumps(as_data(obj), indent=2))


def print_table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A table whose first column (the ids) is never shortened or wrapped, so it can be copied."""
    cells = [[str(v) for v in r] for r in rows]
    if not cells:
        err.print("(none)")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    width = max([len(columns[0]), *(len(r[0]) for r in cells)])
    table.add_column(columns[0], no_wrap=True, min_width=width)
    for name in columns[1:]:
        table.add_column(name)
    for r in cells:
        table.add_row(*r)
    out.print(table)


def print_fields(fields: dict[str, object]) -> None:
    """An object as `name: value` lines (its --json form has every field)."""
    width = max(len(k) for k in fields)
    for k, v in fields.items():
        if v is not None and v != "" and v != {}:
            out.print(f"{k + ':':<{width + 1}} {v}", highlight=False)


def when(value: object) -> str:
    return str(value)[:19].replace("T", " ") if value else ""


def take(items: Iterable[T], n: int) -> list[T]:
    """The first `n` of a listing (the SDK's listings fetch pages lazily)."""
    return list(itertools.islice(items, n))
