"""The `stagecraft` command line: one typer root, its commands registered here, explicitly.

    train, generate          app/cli/local.py    (a spec on this machine; generation)
    up, api, worker, migrate app/cli/service.py  (running the service's parts)
    keys ...                 app/cli/keys.py     (API keys, in the database)
    jobs ...                 app/cli/jobs.py     (a client of a running service)

The command modules import nothing from here, so there is no cycle.
"""

from __future__ import annotations

import typer

from app.cli import jobs, keys, local, service

cli = typer.Typer(
    help="Stagecraft: train language models from a job spec, locally or as a service.",
    no_args_is_help=True,
    add_completion=False,
)
for command in (local.train, local.generate, service.migrate, service.api, service.worker, service.up):
    cli.command()(command)
cli.add_typer(keys.keys_cli, name="keys")
cli.add_typer(jobs.jobs_cli, name="jobs")


def main() -> None:
    cli(prog_name="stagecraft")
