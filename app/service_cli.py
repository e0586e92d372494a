"""`stagecraft up | api | worker | migrate | keys create|list|revoke`: running the service.

Registered on the main typer app by importing this module (app/cli.py does).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
import uvicorn
from rich.console import Console

from app.cli import cli
from app.client_cli import jobs_cli
from app.config import Settings, get_settings

err = Console(stderr=True)
keys_cli = typer.Typer(help="API keys.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")
cli.add_typer(jobs_cli, name="jobs")

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="database, broker and files (default: $STAGECRAFT_DATA_DIR or ~/.stagecraft)"),
]
WORKER_STOP_S = 120  # how long `up` waits for its worker to checkpoint and hand its job back


def _settings(data_dir: Path | None) -> Settings:
    if data_dir is not None:
        os.environ["STAGECRAFT_DATA_DIR"] = str(data_dir.expanduser().resolve())
        get_settings.cache_clear()
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


def worker_argv(queue: str) -> list[str]:
    # solo pool: one job per process, run in the main thread, so the shutdown signal and the
    # training loop share a process. Scale out with more worker processes (one per GPU).
    quiet = ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    return ["worker", "--pool=solo", "--concurrency=1", f"--queues={queue}", "--loglevel=INFO", *quiet]


def _serve(settings: Settings, host: str, port: int) -> uvicorn.Server:
    from app.main import create_app

    config = uvicorn.Config(create_app(settings), host=host, port=port, timeout_graceful_shutdown=3)
    return uvicorn.Server(config)


@cli.command()
def migrate(data_dir: DataDir = None) -> None:
    """Create or upgrade the database tables (Alembic) at STAGECRAFT_DATABASE_URL."""
    from app.db import upgrade

    settings = _settings(data_dir)
    upgrade(settings.db_url)
    err.print(f"database is at the newest revision: {settings.db_url.split('@')[-1]}")


@cli.command()
def api(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    data_dir: DataDir = None,
) -> None:
    """Serve the HTTP API (run `stagecraft migrate` first)."""
    _serve(_settings(data_dir), host, port).run()


@cli.command()
def worker(data_dir: DataDir = None) -> None:
    """Run one training worker: takes jobs from the queue, one at a time.

    SIGTERM or Ctrl-C checkpoints the running job and hands it back to the queue.
    """
    settings = _settings(data_dir)
    from workers.celery_app import celery_app

    celery_app.worker_main(worker_argv(settings.queue))


@cli.command()
def up(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    data_dir: DataDir = None,
) -> None:
    """The whole service on this machine: API + one worker, SQLite and files under the data
    directory, no other server needed. Ctrl-C stops both; a running job is checkpointed and
    continues on the next `up`."""
    from app.db import get_database, upgrade
    from app.services import auth
    from app.tables import ApiKey

    settings = _settings(data_dir)
    upgrade(settings.db_url)
    db = get_database(settings.db_url)
    with db.write() as session:
        if session.query(ApiKey).first() is None:
            key = auth.create_key(session, "local")
            session.commit()
            key_file = settings.data_dir / "api_key"
            key_file.write_text(key + "\n")
            key_file.chmod(0o600)
            err.print(f"created an API key for tenant 'local' (also in {key_file}):\n  {key}")
    server = _serve(settings, host, port)
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "workers.celery_app", *worker_argv(settings.queue)])

    def watch_worker() -> None:
        if proc.wait() != 0 and not server.should_exit:
            err.print(f"[red]the worker exited ({proc.returncode}); stopping[/red]")
        server.should_exit = True

    threading.Thread(target=watch_worker, daemon=True).start()
    err.print(f"stagecraft is up on http://{host}:{port} (data in {settings.data_dir}); Ctrl-C stops it")
    # uvicorn re-raises the signal that stopped it; SIGTERM must end up here too, not kill us
    # before the worker is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # (on Ctrl-C the worker got SIGINT from the terminal too)
            try:
                proc.wait(WORKER_STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if proc.returncode != 0:
        err.print(f"[red]the worker exited with {proc.returncode}[/red]")
        raise typer.Exit(1)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@keys_cli.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="tenant name (created if new)")],
    data_dir: DataDir = None,
) -> None:
    """Print a new API key for a tenant. Only its hash is stored: copy it now."""
    from app.db import get_database
    from app.services import auth

    settings = _settings(data_dir)
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

    settings = _settings(data_dir)
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

    settings = _settings(data_dir)
    with get_database(settings.db_url).write() as session:
        revoked = auth.revoke_key(session, key.removesuffix("..."))
        if revoked is None:
            err.print(f"no single key with id or prefix '{key}' (see `stagecraft keys list`)")
            raise typer.Exit(1)
        session.commit()
    print(f"revoked {revoked.id} ({revoked.prefix}...)")
