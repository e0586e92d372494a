"""`stagecraft up | api | worker | migrate`: running the service's parts.

The worker is started by module path (`python -m celery -A workers.celery_app`), so `app`
never imports `workers`.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
import uvicorn
from rich.console import Console

from app import logs
from app.cli.datadir import DataDir, settings_for
from app.cli.supervise import Supervisor
from app.config import Settings, get_settings
from app.queue import routing

err = Console(stderr=True)
WORKER_STOP_S = 120  # how long `up` waits for its worker to checkpoint and hand its job back
CELERY_APP = "workers.celery_app"  # started by module path: app does not import workers


def worker_argv(settings: Settings) -> list[str]:
    """`python -m celery ...` for one worker, consuming the queues of what it offers
    (app.queue.routing). The solo pool runs one job per process, in the main thread, so the
    shutdown signal and the training loop share a process. A job of N processes runs under
    torchrun, which this worker launches and supervises."""
    queues = ",".join(routing.worker_queues(settings.queue, settings.worker_device, settings.worker_processes))
    quiet = ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    worker = ["worker", "--pool=solo", "--concurrency=1", f"--queues={queues}", "--loglevel=INFO", *quiet]
    return [sys.executable, "-m", "celery", "-A", CELERY_APP, "--quiet", *worker]  # no banner: log lines only


def _serve(settings: Settings, host: str, port: int) -> uvicorn.Server:
    from app.api.main import create_app

    app = create_app(settings)  # logging is ours (app/logs.py); each request's line too (app/api/request_context.py)
    config = uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=3, log_config=None, access_log=False)
    return uvicorn.Server(config)


def _warn(line: str) -> None:
    err.print(f"[yellow]{line}[/yellow]")


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound with SO_REUSEPORT: each API process listens on one of its own, and
    the kernel spreads new connections evenly over them. (On one shared socket, whichever
    process wakes first accepts every connection waiting: 200 clients connecting at once
    landed 117/83 or 200/0 on two processes, and the busier one set everyone's tail latency.)
    The address family as uvicorn picks it: IPv6 for a literal with a colon, else IPv4."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _exit_with_parent(parent: int) -> None:
    """SIGTERM this process (a graceful stop) once `parent`, the `api --workers N` that started
    it, is gone, even killed with SIGKILL, and at once if it is gone already: an API process
    must not keep the port without its supervisor."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


STOP_S = 30  # how long `api --workers N` waits for its processes to finish their requests
START_FAILURES = 5  # a process that failed this often in a row, never up for long: give up


def _serve_processes(settings: Settings, host: str, port: int, workers: int) -> None:
    """`api --workers N` (Linux): N API processes, each on a SO_REUSEPORT socket of its own,
    restarted when one dies; SIGTERM or Ctrl-C stops them all (each finishes its requests);
    a process that keeps failing to start (a bad configuration) ends them all, status 1."""
    try:
        held = _reuse_port_socket(host, port)  # bound, never listening: a taken port fails here
    except OSError as exc:
        err.print(f"[red]cannot listen on {host}:{port}: {exc.strerror or exc}[/red]")
        raise typer.Exit(1) from exc
    port = held.getsockname()[1]  # --port 0: the port the system chose, for every process
    argv = [sys.executable, "-m", "app.cli", "api", "--host", host, "--port", str(port)]
    argv += ["--supervisor", str(os.getpid())]  # its children's parent watch
    children = [Supervisor(argv, _warn, f"API process {i + 1}") for i in range(workers)]
    signals: list[int] = []  # set by the handlers; the loop below polls it (no lock in a handler)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: signals.append(signum))
    for child in children:
        child.start()
    err.print(f"{workers} API processes on http://{host}:{port}")
    failing = False
    while not signals and not failing:
        time.sleep(0.2)
        failing = any(child.failures >= START_FAILURES for child in children)
    for child in children:
        child.signal_stop()
    deadline = time.monotonic() + STOP_S
    codes = [child.wait(max(0.1, deadline - time.monotonic())) for child in children]
    held.close()
    if failing:
        err.print(f"[red]an API process failed to start {START_FAILURES} times in a row; stopped[/red]")
        raise typer.Exit(1)
    if any(code not in (0, -signal.SIGTERM) for code in codes):
        err.print(f"[red]API processes exited with {codes}[/red]")
        raise typer.Exit(1)


def migrate(data_dir: DataDir = None) -> None:
    """Create or upgrade the database tables (Alembic) at STAGECRAFT_DATABASE_URL."""
    from app.migrate import upgrade

    settings = settings_for(data_dir)
    upgrade(settings.db_url)
    err.print(f"database is at the newest revision: {settings.db_url.split('@')[-1]}")


def api(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="API processes sharing the port (about one per core)")] = 1,
    data_dir: DataDir = None,
    supervisor: Annotated[int, typer.Option(hidden=True, help="(one of --workers N's processes: its pid)")] = 0,
) -> None:
    """Serve the HTTP API (run `stagecraft migrate` first). With `--workers N`, N processes
    answer on one port, connections spread evenly over them (SO_REUSEPORT), and one that
    dies is restarted; each keeps its own key cache and serving cache (models loaded for
    generation are loaded in each)."""
    settings = settings_for(data_dir)  # (--data-dir reaches the API processes in their environment)
    logs.configure(settings.log_format)
    if workers > 1 and not sys.platform.startswith("linux"):  # no balancing SO_REUSEPORT: uvicorn's, one socket
        factory = "app.api.main:create_app"
        quiet = {"log_config": logs.dict_config(settings.log_format), "access_log": False}  # as _serve's
        uvicorn.run(factory, factory=True, host=host, port=port, workers=workers, timeout_graceful_shutdown=3, **quiet)
    elif workers > 1:
        _serve_processes(settings, host, port, workers)
    elif supervisor:
        _exit_with_parent(supervisor)
        _serve(settings, host, port).run(sockets=[_reuse_port_socket(host, port)])
    else:
        _serve(settings, host, port).run()


def worker(
    data_dir: DataDir = None,
    device: Annotated[
        str | None, typer.Option(help="what this worker offers: cpu, or cuda (env STAGECRAFT_WORKER_DEVICE)")
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            min=1, max=64, help="the most processes (GPUs) one job may use here (env STAGECRAFT_WORKER_PROCESSES)"
        ),
    ] = None,
) -> None:
    """Run one training worker: takes jobs from the queues of what it offers, one at a time.

    A job goes to a worker that offers its spec's `resources` (docs/scaling.md): `--device
    cuda --processes 8` on a host with 8 GPUs takes jobs of up to 8 processes on cuda, and
    every cpu job. SIGTERM or Ctrl-C checkpoints the running job and hands it back to the queue.
    """
    if device is not None:
        if device not in ("cpu", "cuda"):
            raise typer.BadParameter("cpu or cuda", param_hint="--device")
        os.environ["STAGECRAFT_WORKER_DEVICE"] = device
    if processes is not None:
        os.environ["STAGECRAFT_WORKER_PROCESSES"] = str(processes)
    get_settings.cache_clear()
    settings = settings_for(data_dir)  # (the data directory and the offer reach the worker in its environment)
    argv = worker_argv(settings)
    os.execv(argv[0], argv)  # this process becomes the worker: signals reach it directly


def up(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    data_dir: DataDir = None,
) -> None:
    """The whole service on this machine: API + one worker, SQLite and files under the data
    directory, no other server needed. Ctrl-C stops both; a running job is checkpointed and
    continues on the next `up`."""
    from app.db import get_database
    from app.migrate import upgrade
    from app.services import auth
    from app.tables import ApiKey

    settings = settings_for(data_dir)
    logs.configure(settings.log_format)
    upgrade(settings.db_url)
    db = get_database(settings.db_url)
    key_file = settings.data_dir / "api_key"
    with db.write() as session:
        if session.query(ApiKey).first() is None:
            key = auth.create_key(session, "local")
            session.commit()
            key_file.write_text(key + "\n")
            key_file.chmod(0o600)
            err.print(f"created an API key for tenant 'local' (also in {key_file})")
    server = _serve(settings, host, port)
    worker = Supervisor(worker_argv(settings), _warn)
    worker.start()
    err.print(f"stagecraft is up on http://{host}:{port} (data in {settings.data_dir}); Ctrl-C stops it")
    print(export_line(host, port, key_file), file=sys.stderr, flush=True)
    # uvicorn re-raises the signal that stopped it; SIGTERM must end up here too, not kill us
    # before the worker is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.run()
    except KeyboardInterrupt:
        pass  # Ctrl-C or SIGTERM: a clean stop, status 0
    finally:
        code = worker.stop(WORKER_STOP_S)  # the worker checkpoints its job and hands it back
    if code != 0:
        err.print(f"[red]the worker exited with {code}[/red]")
        raise typer.Exit(1)


def export_line(host: str, port: int, key_file: Path) -> str:
    """The shell line that points clients in other terminals at this service (printed plainly:
    a console would wrap it). Clients with the same STAGECRAFT_DATA_DIR find the key anyway."""
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
    try:
        key = key_file.read_text(encoding="utf-8").strip()
    except OSError:
        key = ""
    if not key:
        return f"export STAGECRAFT_URL={url}   # and STAGECRAFT_API_KEY from `stagecraft keys create --tenant NAME`"
    return f"export STAGECRAFT_URL={url} STAGECRAFT_API_KEY={key}"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
