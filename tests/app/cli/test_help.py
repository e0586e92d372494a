"""Every `stagecraft` command's --help ends with an example, and every command that prints
objects has --json."""

from __future__ import annotations

from typing import Any

import typer
from typer.testing import CliRunner

from app.cli import cli

# commands that print no objects: a run, text, a file path, a stream of JSON lines, a server
NO_JSON = {"train", "generate", "migrate", "api", "worker", "up", "keys create", "keys revoke", "jobs events"}
NO_JSON |= {"models export", "jobs plot"}


def commands() -> dict[str, Any]:
    """Every command by its full name (typer's click objects; groups have `commands`)."""
    root: Any = typer.main.get_command(cli)
    found: dict[str, Any] = {}
    for name, cmd in root.commands.items():
        if hasattr(cmd, "commands"):
            found |= {f"{name} {sub}": c for sub, c in cmd.commands.items()}
        else:
            found[name] = cmd
    return found


def test_every_help_has_an_example_and_json_where_objects_are_printed() -> None:
    found = commands()
    wanted = {"datasets upload", "datasets list", "datasets show", "datasets delete", "models list", "models show"}
    wanted |= {"models export", "models upload", "jobs validate", "jobs wait", "jobs metrics", "jobs evaluation"}
    wanted |= {"jobs checkpoints", "jobs submit", "jobs list", "jobs show", "jobs events", "jobs cancel", "status"}
    assert wanted <= set(found)
    runner = CliRunner()
    for name, cmd in found.items():
        result = runner.invoke(cli, [*name.split(), "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (name, result.output)
        assert "Example: stagecraft" in result.output or "Example: " in (cmd.epilog or ""), name
        has_json = any("--json" in p.opts for p in cmd.params)
        assert has_json == (name not in NO_JSON), name
