"""The `stagecraft` command line: one typer root, its commands registered here, explicitly.

    train, generate          app/cli/local.py    (a spec on this machine; generation)
    up, api, worker, migrate app/cli/service.py  (running the service's parts)
    keys ...                 app/cli/keys.py     (API keys, in the database)
    status                   app/cli/status.py   (is the service at STAGECRAFT_URL ready)
    datasets ...             app/cli/datasets.py (clients of a running service, on the SDK:
    jobs ...                 app/cli/jobs.py      connect.py makes the client, submit.py
    models ...               app/cli/catalog.py   checks a spec and its files before upload)

The command modules import nothing from here, so there is no cycle.
"""

from __future__ import annotations

import typer

from app.cli import catalog, datasets, jobs, keys, local, service, status
from app.config import SettingsError

cli = typer.Typer(
    help="Stagecraft: train language models from a job spec, locally or as a service.",
    no_args_is_help=True,
    add_completion=False,
)
for command, epilog in (
    (local.train, "Example: stagecraft train examples/multistep.yaml --out runs/example"),
    (local.generate, 'Example: stagecraft generate runs/example --prompt "The number 42 is written"'),
    (service.migrate, "Example: STAGECRAFT_DATABASE_URL=postgresql+psycopg://u@host/db stagecraft migrate"),
    (service.api, "Example: stagecraft api --host 0.0.0.0 --port 8000"),
    (service.worker, "Example: stagecraft worker --data-dir /srv/stagecraft"),
    (service.up, "Example: stagecraft up --port 8000 --data-dir ~/.stagecraft"),
    (status.status, "Example: stagecraft up & stagecraft status --wait 60"),
):
    cli.command(epilog=epilog)(command)
cli.add_typer(keys.keys_cli, name="keys")
cli.add_typer(datasets.datasets_cli, name="datasets")
cli.add_typer(jobs.jobs_cli, name="jobs")
cli.add_typer(catalog.models_cli, name="models")


def main() -> None:
    try:
        cli(prog_name="stagecraft")
    except SettingsError as exc:  # a bad STAGECRAFT_ variable: its name and value, no traceback
        typer.echo(f"stagecraft: {exc}", err=True)
        raise SystemExit(2) from None
