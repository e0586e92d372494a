"""`stagecraft keys create | list | revoke`: API keys, written straight to the database."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from app.cli.datadir import DataDir, settings_for

keys_cli = typer.Typer(help="API keys.", no_args_is_help=True)
err = Console(stderr=True)


@keys_cli.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="tenant name (created if new)")],
    data_dir: DataDir = None,
) -> None:
    """Print a new API key for a tenant. Only its hash is stored: copy it now."""
    from app.db import get_database
    from app.services import auth

    settings = settings_for(data_dir)
    with get_database(settings.db_url).write() as session:
        key = auth.create_key(session, tenant)
        session.commit()
    print(key)


@keys_cli.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="only this tenant's keys")] = None,
    data_dir: DataDir = None,
) -> None:
    """List keys: id, tenant, the key's first characters, creation time (keys themselves are not stored)."""
    from app.db import get_database
    from app.services import auth

    settings = settings_for(data_dir)
    with get_database(settings.db_url).read() as session:
        for key, tenant_name in auth.list_keys(session, tenant):
            print(f"{key.id}\t{tenant_name}\t{key.prefix}...\t{key.created_at.isoformat(timespec='seconds')}")


@keys_cli.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="the key's id (key_...) or the prefix `keys list` shows (sk-sc-...)")],
    data_dir: DataDir = None,
) -> None:
    """Revoke a key: the API refuses it within STAGECRAFT_KEY_CACHE_S seconds (default 10)."""
    from app.db import get_database
    from app.services import auth

    settings = settings_for(data_dir)
    with get_database(settings.db_url).write() as session:
        revoked = auth.revoke_key(session, key.removesuffix("..."))
        if revoked is None:
            err.print(f"no single key with id or prefix '{key}' (see `stagecraft keys list`)")
            raise typer.Exit(1)
        session.commit()
    print(f"revoked {revoked.id} ({revoked.prefix}...)")
