"""Fixtures of the SDK tests: a real `stagecraft up` (API + worker, SQLite, local files) in a
temporary data directory, its API key, the example data generated small by
examples/make_data.py, and the example spec shrunk to seconds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO_ROOT
from tests.examples.test_examples import shrunk_example

READY_TIMEOUT_S = 90


def cli() -> list[str]:
    exe = Path(sys.executable).parent / "stagecraft"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "app.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any STAGECRAFT_ setting (the tests choose them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECRAFT_")}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}, **extra)
    return env


@dataclass
class Server:
    """A service process (`stagecraft up` or `stagecraft api`) and where it keeps its data."""

    argv: list[str]
    url: str
    data_dir: Path
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        with self.log.open("ab") as out:
            # Its own session, so `interrupt` can signal it and its worker as a terminal's Ctrl-C does.
            self.popen = subprocess.Popen(
                self.argv, env=clean_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def wait_ready(self, path: str = "/readyz") -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"{self.argv[1:3]} exited ({self.popen.returncode}):\n{self.tail()}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"not ready after {READY_TIMEOUT_S} s:\n{self.tail()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.popen is None:
            return 0
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(120)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        code, self.popen = self.popen.returncode, None
        return int(code)

    def interrupt(self) -> int:
        """Ctrl-C: SIGINT to the process group (`up` and its worker); the exit status."""
        assert self.popen is not None
        os.killpg(self.popen.pid, signal.SIGINT)
        try:
            self.popen.wait(120)
        finally:
            code = self.stop()  # only signals it if it is still running
        return code

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    @property
    def api_key(self) -> str:
        return (self.data_dir / "api_key").read_text(encoding="utf-8").strip()


def server(kind: str, root: Path, port: int | None = None) -> Server:
    port = port or free_port()
    data = root / "data"
    argv = [*cli(), kind, "--port", str(port), "--data-dir", str(data)]
    return Server(argv, f"http://127.0.0.1:{port}", data, root / f"{kind}.log")


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`stagecraft up` on a free port, ready, for one test module."""
    s = server("up", tmp_path_factory.mktemp("up")).start()
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def example_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """corpus.txt (400 lines) and pairs.jsonl (90 records) from examples/make_data.py."""
    out = tmp_path_factory.mktemp("example-data")
    argv = [sys.executable, str(REPO_ROOT / "examples" / "make_data.py"), "--out", str(out)]
    done = subprocess.run(
        [*argv, "--pairs", "90", "--corpus-lines", "400"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return out


def tiny_spec(example_data: Path, corpus_id: str, pairs_id: str) -> dict[str, Any]:
    """examples/multistep.yaml shrunk to 16 steps of a 2-layer model, on these dataset ids."""
    spec = shrunk_example(example_data)
    spec["data"]["corpus"]["dataset"], spec["data"]["pairs"]["dataset"] = corpus_id, pairs_id
    return spec
