"""One process of a multi-process run: `python -m models.training.rank CONTROL`, started by
torchrun for models.training.launch.run_processes (whose docstring describes the whole).

CONTROL (JSON, written by the parent): the spec, the workdir, the path of every data and
model reference (this process never resolves one itself), the checkpoint to resume from,
whether checkpoints are published and where they are staged, the parent's socket and the
folder for this process's stderr (`rank-N.log`). Each rank runs the Pipeline with its
Group (models/training/distributed.py). Rank 0 bridges the parent's callbacks over the
socket (models/training/wire.py): its events and checkpoints go to the parent, the
parent's "stop" comes back and is agreed by every rank after each step, so all of them
checkpoint and stop at the same step. A rank that fails writes `rank-N.error.json` (its
error's code and message) beside its log, for the parent to name it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from models import events
from models.errors import StagecraftError, Stopped, TrainingError
from models.files import read_json, write_json
from models.spec import parse_spec
from models.training.distributed import Group
from models.training.pipeline import Pipeline
from models.training.run import drive
from models.training.wire import Channel, Message

# A test hook (tests/models/training/test_distributed.py), "RANK:STEP": that rank fails right
# after that step, as a process that crashes mid-run.
CRASH_ENV = "STAGECRAFT_TEST_CRASH"


class Bridge:
    """Rank 0's end of the socket: events and publish requests out, the parent's answers and
    its "stop" in (read by a thread of their own, so a stop arrives while rank 0 trains)."""

    def __init__(self, path: str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        self.channel = Channel(sock)
        self.stop = threading.Event()
        self.gone = threading.Event()  # the parent closed the socket (or died): nobody to train for
        self.answers: queue.Queue[Message | None] = queue.Queue()
        threading.Thread(target=self._read, name="parent", daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                for message in self.channel.receive():
                    if message["type"] == "stop":
                        self.stop.set()
                    else:
                        self.answers.put(message)
        except (EOFError, OSError):
            self.gone.set()
            self.answers.put(None)  # a publish waiting for the parent fails

    def event(self, event: events.Event) -> None:
        self.channel.send({"type": "event", "event": event})

    def publish(self, staged: Path, final: Path, event: events.Event) -> None:
        self.channel.send({"type": "publish", "staged": str(staged), "final": str(final), "event": event})
        answer = self.answers.get()
        if answer is None or answer["type"] != "published":
            raise TrainingError("system_error", f"checkpoint {final.name} was not published")


def _rank0_publishes(staged: Path, final: Path, event: events.Event) -> None:
    """The publish hook of ranks >0: they stage shards where rank 0 publishes, never publish."""
    raise AssertionError("only rank 0 publishes checkpoints")


def _run(control: dict[str, Any], bridge: Bridge | None) -> Message:
    """Train as this rank; the message that ends the run (result or stopped)."""
    spec = parse_spec(control["spec"])
    paths: dict[str, str] = control["paths"]
    group = Group.start(spec)
    crash = os.environ.get(CRASH_ENV)

    def should_stop() -> bool:
        if crash == f"{group.rank}:{p.global_step}":
            raise RuntimeError(f"{CRASH_ENV}: rank {group.rank} fails after step {p.global_step}")
        if bridge is not None and bridge.gone.is_set():  # (rank 0 ends, and torchrun the others)
            raise TrainingError("system_error", "the parent process is gone")
        return group.agreed(float(bridge is not None and bridge.stop.is_set())) > 0

    publish = (bridge.publish if bridge else _rank0_publishes) if control["publish"] else None
    staging = None if control["staging"] is None else Path(control["staging"])
    workdir = Path(control["workdir"])
    on_event = None if bridge is None else bridge.event
    p = Pipeline(spec, workdir, on_event, should_stop, lambda ref: Path(paths[ref]), publish, staging, group)
    resume_from = None if control["resume_from"] is None else Path(control["resume_from"])
    try:
        result = drive(p, resume_from)
    except Stopped as exc:
        group.close()
        return {"type": "stopped", "step": exc.step}
    group.barrier()  # rank 0 has written the model
    group.close()
    model_dir, steps = str(result.model_dir), result.steps
    return {"type": "result", "model_dir": model_dir, "steps": steps, "evaluation": result.evaluation}


def _record(logs: Path, rank: int, code: str, message: str) -> None:
    """Why this rank failed, for the parent (models/training/launch.py)."""
    write_json(logs / f"rank-{rank}.error.json", {"code": code, "message": message})


def main(argv: list[str]) -> int:
    control = read_json(Path(argv[1]))
    rank, logs = int(os.environ["RANK"]), Path(control["logs"])
    log = open(logs / f"rank-{rank}.log", "ab", buffering=0)  # noqa: SIM115 (this process's stderr until it exits)
    os.dup2(log.fileno(), sys.stderr.fileno())
    bridge = Bridge(control["socket"]) if rank == 0 else None
    try:
        final = _run(control, bridge)
    except StagecraftError as exc:
        final = {"type": "error", "code": exc.code, "message": str(exc)}
    except BaseException as exc:
        traceback.print_exc()
        _record(logs, rank, "system_error", f"{type(exc).__name__}: {exc}")
        return 1  # rank 0 too sends nothing: the parent names the rank that failed first, with its log
    if final["type"] == "error":
        _record(logs, rank, final["code"], final["message"])
    if bridge is not None:
        with contextlib.suppress(OSError):  # (a parent that is gone hears nothing)
            bridge.channel.send(final)
        bridge.channel.close()
    return 1 if final["type"] == "error" else 0  # a failed rank 0 ends the others (torchrun stops them)


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # at once: everything is written, and the interpreter's own teardown of torch takes seconds
