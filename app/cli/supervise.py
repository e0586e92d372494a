"""A child process kept running: restarted with backoff when it exits on its own (an OOM
kill, a crash, a worker that stopped consuming), stopped with one SIGTERM. `stagecraft up`
keeps its worker so; `stagecraft api --workers N` its N API processes.

The child runs in a session of its own, so a terminal's Ctrl-C reaches the parent only: the
child then gets exactly one SIGTERM (a worker checkpoints its job and hands it back; a
second signal would make Celery stop cold, mid-step).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable

BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
HEALTHY_S = 60.0  # a worker that ran this long resets the backoff


class Supervisor:
    def __init__(self, argv: list[str], say: Callable[[str], None], name: str = "the worker"):
        self.argv, self.say, self.name = argv, say, name
        self.stopping = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.failures = 0  # exits in a row of a child that never ran HEALTHY_S
        self.exited_before_stop = False
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"supervisor: {name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        with self.lock:
            if self.stopping.is_set():
                return None
            self.proc = subprocess.Popen(self.argv, start_new_session=True)
            return self.proc

    def _run(self) -> None:
        while True:
            proc = self._spawn()
            if proc is None:
                return
            began = time.monotonic()
            code = proc.wait()
            if self.stopping.is_set():
                return
            self.failures = 0 if time.monotonic() - began > HEALTHY_S else self.failures + 1
            delay = BACKOFF_S[min(self.failures, len(BACKOFF_S)) - 1] if self.failures else BACKOFF_S[0]
            self.restarts += 1
            self.say(f"{self.name} exited ({code}); starting another in {delay:.0f} s")
            if self.stopping.wait(delay):
                return

    def stop(self, timeout: float) -> int:
        """SIGTERM the child once and wait for it (then kill it); its exit status."""
        self.signal_stop()
        return self.wait(timeout)

    def signal_stop(self) -> None:
        """No more restarts; SIGTERM the child once (several supervisors stop together so)."""
        with self.lock:
            if self.stopping.is_set():
                return
            self.stopping.set()
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
            else:  # between a crash and its restart: nothing to stop
                self.exited_before_stop = self.proc is not None

    def wait(self, timeout: float) -> int:
        """After `signal_stop`: the child's exit status (0 if it was waiting to be restarted),
        killing it after `timeout` seconds."""
        with self.lock:
            proc = self.proc
        if proc is None or self.exited_before_stop:
            self.thread.join(5)
            return 0
        if proc.poll() is None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.thread.join(5)
        return proc.returncode
