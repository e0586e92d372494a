"""Uploads in flight, and what a killed process leaves of them.

An upload is streamed to a file next to where it is kept, then validated, unpacked or
converted: `<datasets>/<tenant>/.incoming-*` (app.services.datasets.incoming_path),
`<models>/.incoming/up_*` and its `.d` scratch folder (app.services.archives.incoming_path),
`<models>/<tenant>/.*.partial` (a model being converted). A request that fails removes its
own; a process killed mid-upload cannot, so `sweep` removes the ones older than `STALE_S`,
at the API's start and every `SWEEP_EVERY_S` while it runs (app.api.main). Age, not owner:
several API processes share the data directory, and an upload of a live process (streaming,
validating, waiting for the inference thread) is never that old.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from app.config import Settings

log = logging.getLogger("stagecraft.api")

STALE_S = 3600.0
SWEEP_EVERY_S = 600.0


def leftovers(settings: Settings) -> list[Path]:
    """Every upload in flight, of any process, by the layout above."""
    found = list(settings.datasets_dir.glob("*/.incoming-*"))
    found += (settings.models_dir / ".incoming").glob("*")
    found += settings.models_dir.glob("*/.*.partial")
    return found


def sweep(settings: Settings, older_than_s: float = STALE_S) -> list[Path]:
    """Remove the uploads in flight untouched for `older_than_s`; returns what went."""
    cutoff = time.time() - older_than_s
    gone = []
    for path in leftovers(settings):
        try:
            if path.lstat().st_mtime >= cutoff:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:  # its own request (or another sweep) removed it meanwhile
            continue
        except OSError as exc:  # not ours to remove, say: the next sweep tries again
            log.warning("could not remove the stale upload %s: %s", path, exc)
            continue
        gone.append(path)
    if gone:
        log.warning("removed %d upload(s) left by a stopped process: %s", len(gone), ", ".join(p.name for p in gone))
    return gone
