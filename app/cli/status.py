"""`stagecraft status`: is the service at STAGECRAFT_URL up and ready, and does this shell
have a key for it. `--wait` blocks until it is ready (after starting `stagecraft up`)."""

from __future__ import annotations

from typing import Annotated

import typer

import stagecraft
from app.cli.connect import JsonOption, err, print_json


def status(
    wait: Annotated[float, typer.Option("--wait", min=0, help="seconds to wait for it to become ready")] = 0,
    json_: JsonOption = False,
) -> None:
    """Whether the service answers and is ready (database migrated, broker reachable). Exits 0
    when ready, 1 otherwise."""
    with stagecraft.Client(api_key="-", max_retries=0) as client:  # readiness needs no key
        try:
            client.wait_until_ready(timeout=wait)
            ready, problem = True, ""
        except stagecraft.APIConnectionError as exc:
            ready, problem = False, f"cannot reach it ({exc})"
        except stagecraft.APIError as exc:
            ready, problem = False, "; ".join(f"{d.get('component')}: {d.get('message')}" for d in exc.details)
    try:  # looked for once the service is up: `up` writes its key file on its first start
        stagecraft.Client().close()
        key = "found"
    except stagecraft.ConfigurationError as exc:
        key = f"missing ({exc})"
    if json_:
        print_json({"url": client.url, "ready": ready, "problem": problem or None, "api_key": key})
    else:
        err.print(f"{client.url}: {'ready' if ready else 'not ready: ' + problem}; API key {key}", highlight=False)
    if not ready:
        raise typer.Exit(1)
