"""`stagecraft keys create | list | revoke`: API keys, written straight to the database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from app.cli.datadir import DataDir, settings_for

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

keys_cli = typer.Typer(
    help="API keys, in the service's database (STAGECRAFT_DATABASE_URL or --data-dir).", no_args_is_help=True
)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@contextmanager
def migrated(data_dir: Path | None, write: bool) -> Iterator[Session]:
    """A session on a database whose schema is this code's; else one line saying what to run, exit 2."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.db import get_database
    from app.migrate import schema_problem

    settings = settings_for(data_dir)
    db = get_database(settings.db_url)
    try:
        with db.write() if write else db.read() as session:
            problem = schema_problem(session)
            if problem is not None:
                err.print(f"[red]error:[/red] {problem}")
                raise typer.Exit(2)
            yield session
    except SQLAlchemyError as exc:
        where = settings.db_url.split("@")[-1]
        err.print(
            f"[red]error:[/red] cannot use the database {where} ({type(exc).__name__}); run `stagecraft migrate`?"
        )
        raise typer.Exit(2) from None


@keys_cli.command("create", epilog="Example: stagecraft keys create --tenant acme")
def keys_create(
    tenant: Annotated[str, typer.Option(help="tenant name (created if new)")],
    data_dir: DataDir = None,
) -> None:
    """Print a new API key for a tenant. Only its hash is stored: copy it now."""
    from app.services import auth

    with migrated(data_dir, write=True) as session:
        key = auth.create_key(session, tenant)
        session.commit()
    print(key)


@keys_cli.command("list", epilog="Example: stagecraft keys list --tenant acme")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="only this tenant's keys")] = None,
    data_dir: DataDir = None,
    json_: Annotated[bool, typer.Option("--json", help="print the keys as JSON (for scripts)")] = False,
) -> None:
    """List keys: id, tenant, the key's first characters, creation time (keys themselves are not stored)."""
    from app.services import auth

    with migrated(data_dir, write=False) as session:
        rows = [
            {"id": k.id, "tenant": t, "prefix": k.prefix, "created_at": k.created_at.isoformat(timespec="seconds")}
            for k, t in auth.list_keys(session, tenant)
        ]
    if json_:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        print(f"{r['id']}\t{r['tenant']}\t{r['prefix']}...\t{r['created_at']}")


@keys_cli.command("revoke", epilog="Example: stagecraft keys revoke sk-sc-X1uOUn...")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="the key's id (key_...) or the prefix `keys list` shows (sk-sc-...)")],
    data_dir: DataDir = None,
) -> None:
    """Revoke a key: the API refuses it within STAGECRAFT_KEY_CACHE_S seconds (default 10)."""
    from app.services import auth

    with migrated(data_dir, write=True) as session:
        revoked = auth.revoke_key(session, key.removesuffix("..."))
        if revoked is None:
            err.print(f"no single key with id or prefix '{key}' (see `stagecraft keys list`)")
            raise typer.Exit(1)
        session.commit()
    print(f"revoked {revoked.id} ({revoked.prefix}...)")
