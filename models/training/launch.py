"""`run_processes`: a job of `resources.processes` processes under torchrun, with the contract
of models.training.run.run (the same arguments, result and exceptions).

The parent checks the workdir as `run` does and resolves every data and model reference of
the spec itself (its `resolve` may ask a database; the processes never do), then writes
them with the spec to a control file and starts

    python -m torch.distributed.run --standalone --nproc-per-node N --max-restarts 0 \\
        -m models.training.rank CONTROL

in a session of its own, so that the whole process group can be signalled. Rank 0 connects
to the parent's Unix domain socket (models/training/wire.py): its events go to `on_event`,
its checkpoints to `publish` (whose failure ends the run), and `should_stop`, polled every
POLL_S seconds on a thread, reaches it as "stop"; then all ranks checkpoint and stop at the
same step (models/training/rank.py). The parent never touches CUDA: the processes pick
their devices (gloo on the CPU, NCCL on CUDA).

No process outlives the call: however it ends (a result, an exception of a callback, a
failed or killed process, an interrupt), the process group gets SIGTERM, then SIGKILL.
Processes that exit without rank 0's final message raise TrainingError system_error naming
the rank that failed, with the last lines of its stderr.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from models import events
from models.errors import Stopped, TrainingError
from models.files import read_json, write_json
from models.spec import JobSpec
from models.training.final import RunResult
from models.training.run import prepare
from models.training.run_state import EventSink, PublishHook
from models.training.wire import Channel, Message

POLL_S = 0.2  # how often should_stop is asked, and the parent looks at the processes
EXIT_S = 10.0  # after rank 0's final message, how long the processes may take to exit
TERM_S = 5.0  # after SIGTERM, how long before SIGKILL
TAIL_LINES = 20


def references(spec: JobSpec) -> list[str]:
    """Every data and model reference of `spec`: what `resolve` is asked for."""
    refs = [ref.dataset for ref in spec.data.values()]
    if spec.model.init_from is not None:
        refs.append(spec.model.init_from.model)
    return refs


def run_processes(
    spec: JobSpec,
    workdir: Path,
    on_event: EventSink | None = None,
    should_stop: Callable[[], bool] | None = None,
    resolve: Callable[[str], Path] = Path,
    resume: bool = False,
    publish: PublishHook | None = None,
    staging: Path | None = None,
) -> RunResult:
    """Train `spec` in `workdir` on spec.resources.processes processes, as models.training.run.run
    does in one. `on_event` and `publish` are called on the calling thread, `should_stop` every
    POLL_S seconds on a thread of its own (its exception, LeaseLost say, is raised here)."""
    resume_from = prepare(spec, workdir, resume)
    paths = {ref: str(resolve(ref)) for ref in references(spec)}
    with tempfile.TemporaryDirectory(prefix="stagecraft-") as tmp:
        folder = Path(tmp)  # (short: a socket's path has at most 107 bytes)
        address = str(folder / "rank0.sock")
        control = {
            "spec": spec.model_dump(mode="json"),
            "workdir": str(workdir.absolute()),
            "paths": paths,
            "resume_from": None if resume_from is None else str(resume_from.absolute()),
            "publish": publish is not None,
            "staging": None if staging is None else str(staging.absolute()),
            "socket": address,
            "logs": tmp,
        }
        write_json(folder / "control.json", control)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(address)
        server.listen(1)
        server.settimeout(POLL_S)
        proc = _start(folder, spec.resources.processes)
        try:
            return _Parent(proc, folder, on_event, should_stop, publish).serve(server)
        finally:
            _end_group(proc)
            server.close()


def _start(folder: Path, n: int) -> subprocess.Popen[bytes]:
    """torchrun with `n` processes, in a session of its own, its output in `folder`/torchrun.log."""
    root = str(Path(__file__).resolve().parents[2])  # where `models` is, for `-m models.training.rank`
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // n))  # the cores, shared out
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]
    command += ["--max-restarts=0", "-m", "models.training.rank", str(folder / "control.json")]
    with open(folder / "torchrun.log", "wb") as log:
        return subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to every process of the group (torchrun's session: its ranks too, even if
    torchrun is gone), SIGKILL to what is left after TERM_S."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + TERM_S
        while time.monotonic() < deadline and _group_alive(proc):
            time.sleep(0.05)
    proc.poll()


def _group_alive(proc: subprocess.Popen[bytes]) -> bool:
    """Whether a process of the group still runs: torchrun (reaped here), or a rank (one that
    has ended but that nobody reaps, a zombie, counts as ended)."""
    if proc.poll() is None:
        return True
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return _running_in_group(proc.pid)


def _running_in_group(pgid: int) -> bool:
    """A member of process group `pgid` that is not a zombie (one nobody reaps is done all the same)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _signalled(torchrun_log: str) -> list[tuple[int, int]]:
    """(rank, exit code) of each rank that torchrun's failure summary says a signal ended."""
    found = re.findall(r"rank\s*:\s*(\d+) \(local_rank.*\n\s*exitcode\s*:\s*(-?\d+)", torchrun_log)
    return [(int(r), int(c)) for r, c in found if int(c) < 0]


class _Parent:
    """The parent's side of one run: serves rank 0 until its final message or the group's end."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        folder: Path,
        on_event: EventSink | None,
        should_stop: Callable[[], bool] | None,
        publish: PublishHook | None,
    ):
        self.proc, self.folder = proc, folder
        self.on_event = on_event or (lambda e: None)
        self.should_stop = should_stop or (lambda: False)
        self.publish = publish
        self.channel: Channel | None = None
        self.final: Message | None = None
        self.failure: BaseException | None = None  # should_stop's, raised on the main thread
        self.done = threading.Event()

    def serve(self, server: socket.socket) -> RunResult:
        poller = threading.Thread(target=self._poll, name="should-stop", daemon=True)
        poller.start()
        try:
            self._accept(server)
            self._read()
        finally:
            self.done.set()
            poller.join()
            if self.channel is not None:
                self.channel.close()
        if self.final is None:
            raise self._failed()
        with contextlib.suppress(subprocess.TimeoutExpired):  # (then ended with the group)
            self.proc.wait(EXIT_S)
        final = self.final
        if final["type"] == "stopped":
            raise Stopped(final["step"])
        if final["type"] == "error":
            raise TrainingError(final["code"], final["message"])
        return RunResult(Path(final["model_dir"]), final["steps"], final["evaluation"])

    def _poll(self) -> None:
        """On its own thread: should_stop() every POLL_S; True sends "stop" (once rank 0 is there)."""
        sent = False
        while not self.done.wait(POLL_S):
            try:
                stop = self.should_stop()
            except BaseException as exc:  # LeaseLost and the like: the main thread raises it
                self.failure = exc
                return
            if stop and not sent and self.channel is not None:
                try:
                    self.channel.send({"type": "stop"})
                except OSError:
                    return  # rank 0 is gone: the main thread sees it
                sent = True

    def _check(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _accept(self, server: socket.socket) -> None:
        while self.proc.poll() is None:
            self._check()
            try:
                sock, _ = server.accept()
            except TimeoutError:
                continue
            sock.settimeout(POLL_S)
            self.channel = Channel(sock)
            return

    def _read(self) -> None:
        """Rank 0's messages, until its final one or its end."""
        while self.channel is not None and self.final is None:
            self._check()
            try:
                messages = self.channel.receive()
            except (EOFError, OSError):
                return
            for message in messages:
                self._handle(message)

    def _handle(self, message: Message) -> None:
        kind = message["type"]
        if kind == "event":
            self.on_event(cast(events.Event, message["event"]))
        elif kind == "publish":
            assert self.channel is not None and self.publish is not None
            try:
                self.publish(Path(message["staged"]), Path(message["final"]), cast(events.Event, message["event"]))
            except BaseException:
                self.channel.send({"type": "publish_failed"})
                raise
            self.channel.send({"type": "published"})
        else:
            self.final = message

    def _failed(self) -> TrainingError:
        """Why the processes ended without rank 0's final message. The culprit is a rank that
        a signal other than torchrun's SIGTERM killed before it could record anything (out
        of memory, a segfault), else the first rank that recorded an error (with its own code
        for a user or time-limit error): the others fail after it, losing their peer."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(EXIT_S)
        marks = sorted(self.folder.glob("rank-*.error.json"), key=lambda p: p.stat().st_mtime_ns)
        recorded = [int(p.name.split(".")[0].removeprefix("rank-")) for p in marks]
        signalled = _signalled(self._tail("torchrun.log", 400))
        killed = [(r, c) for r, c in signalled if -c != signal.SIGTERM and r not in recorded]
        if killed:
            rank, code = min(killed)
            return TrainingError(
                "system_error", f"rank {rank} was killed (exit code {code}): {self._tail(f'rank-{rank}.log')}"
            )
        if recorded:
            rank, error = recorded[0], read_json(marks[0])
            if error["code"] != "system_error":
                return TrainingError(error["code"], error["message"])
            return TrainingError("system_error", f"rank {rank} failed: {self._tail(f'rank-{rank}.log')}")
        code = self.proc.returncode
        return TrainingError("system_error", f"the processes ended (exit code {code}): {self._tail('torchrun.log')}")

    def _tail(self, name: str, lines: int = TAIL_LINES) -> str:
        try:
            text = (self.folder / name).read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"
