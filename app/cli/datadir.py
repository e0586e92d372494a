"""The `--data-dir` option of the commands that run the service or write to its database."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from app.config import Settings, get_settings

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="database, broker and files (default: $STAGECRAFT_DATA_DIR or ~/.stagecraft)"),
]


def settings_for(data_dir: Path | None) -> Settings:
    """The settings, with `--data-dir` (when given) in place of STAGECRAFT_DATA_DIR; also set in
    the environment, for the processes this one starts."""
    if data_dir is not None:
        os.environ["STAGECRAFT_DATA_DIR"] = str(data_dir.expanduser().resolve())
        get_settings.cache_clear()
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings
