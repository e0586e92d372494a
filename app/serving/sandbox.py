"""Work on untrusted files in a child process with limits: model import and conversion.

An uploaded model is read by parsers (safetensors, GGUF, tokenizer files, archives) that a
hostile file can make slow or large. None of that runs in the API process: `run` starts a
fresh child for each task, `python -m app.serving.sandbox`, which before anything else

- caps its address space (RLIMIT_AS, `import_memory_bytes`) and CPU time (RLIMIT_CPU), writes
  no core file, runs at nice 10 (decoding in the API process comes first on a shared CPU) with
  one torch/OpenMP/tokenizers thread;
- then runs one allow-listed entry (ENTRIES, by module path: nothing here imports what it runs).

What crosses the boundary is JSON, both ways: the request on the child's stdin, its answer on
its stdout (the child has read hostile data: nothing it says is unpickled). Files travel as
paths: the child writes the converted model folder itself. The parent kills the child at the
wall-clock deadline (`import_timeout_s`).

Answers: the entry's result; a ServiceError it raised, as it raised it; 408
`time_limit_exceeded` past the deadline or the CPU limit; 422 `resource_limit_exceeded` past the
memory limit; 422 `unsupported_model` if the child died otherwise (a parser crashing on the
file). At most `import_workers` children run at once per API process, one per tenant: a
tenant's imports wait for its own, never on the inference thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import json
import logging
import os
import resource
import signal
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import InternalError, Invalid, ServiceError, TimeLimitExceeded

log = logging.getLogger("stagecraft.sandbox")
ENTRIES = {"model_import": "app.services.conversion:sandboxed_convert"}  # name -> "module:function"
THREADS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS")


@dataclass(frozen=True)
class Limits:
    time_s: float
    memory_bytes: int


class _Gate:
    """At most `workers` children at once, one per key (tenant), on one event loop."""

    def __init__(self, workers: int):
        self.slots = asyncio.Semaphore(max(1, workers))
        self.keys: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def lock(self, key: str) -> asyncio.Lock:
        lock = self.keys.get(key)
        if lock is None:
            lock = self.keys[key] = asyncio.Lock()
        return lock


_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Gate] = weakref.WeakKeyDictionary()


def _gate(workers: int) -> _Gate:
    loop = asyncio.get_running_loop()
    if loop not in _GATES:
        _GATES[loop] = _Gate(workers)
    return _GATES[loop]


def _child_env() -> dict[str, str]:
    env = dict(os.environ, MALLOC_ARENA_MAX="2", TOKENIZERS_PARALLELISM="false", **dict.fromkeys(THREADS, "1"))
    root = str(Path(__file__).resolve().parents[2])  # where `app` is importable from
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


async def run(entry: str, args: dict[str, Any], limits: Limits, key: str, workers: int) -> Any:
    """ENTRIES[entry](args) in a child within `limits`, after the one running for `key`."""
    gate = _gate(workers)
    async with gate.lock(key), gate.slots:
        return await _run_child(entry, args, limits)


async def _run_child(entry: str, args: dict[str, Any], limits: Limits) -> Any:
    request = {"entry": entry, "args": args, "memory_bytes": limits.memory_bytes, "cpu_s": limits.time_s}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.serving.sandbox",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=_child_env(),
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(request).encode()), limits.time_s)
    except TimeoutError:
        raise TimeLimitExceeded(_over_time(limits)) from None
    finally:
        if proc.returncode is None:  # past the deadline, or the request went away
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return _answer(proc.returncode, out, err, limits)


def _over_time(limits: Limits) -> str:
    return f"the import took longer than its limit of {limits.time_s:g} s (setting IMPORT_TIMEOUT_S)"


def _answer(code: int | None, out: bytes, err: bytes, limits: Limits) -> Any:
    try:
        answer = json.loads(out.decode("utf-8").strip().splitlines()[-1]) if out.strip() else None
    except (UnicodeDecodeError, ValueError):
        answer = None
    if code == 0 and isinstance(answer, dict) and "ok" in answer:
        return answer["ok"]
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        e = answer["error"]
        error = ServiceError(str(e.get("message")), list(e.get("details") or []), code=str(e.get("code")))
        error.status = int(e.get("status", 400))
        raise error
    if code in (-signal.SIGXCPU, -signal.SIGKILL):  # the CPU limit (SIGKILL: its hard limit)
        raise TimeLimitExceeded(_over_time(limits))
    log.warning("sandboxed import died (exit %s): %s", code, err[-4000:].decode("utf-8", "replace"))
    if code is not None and code < 0:
        message = f"the file could not be read: its converter stopped on signal {signal.Signals(-code).name}"
        raise Invalid(message, [{"loc": "file", "message": message}], code="unsupported_model") from None
    raise InternalError("the import failed; it has been logged")


def _limit(memory_bytes: int, cpu_s: float) -> None:
    """In the child, before it reads anything."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    cpu = max(1, int(cpu_s) + 1)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.nice(10)
    with contextlib.suppress(OSError, AttributeError):  # Linux: die with the API process (PR_SET_PDEATHSIG)
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)


def _error(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"error": {"status": status, "code": code, "message": message, "details": details or []}}


def main() -> None:
    """The child: one request from stdin, one JSON line on stdout (the real stdout: anything a
    library prints goes to stderr)."""
    request = json.loads(sys.stdin.buffer.read())
    answer_fd = os.dup(1)
    os.dup2(2, 1)
    answer: dict[str, Any] | None = None
    try:
        _limit(int(request["memory_bytes"]), float(request["cpu_s"]))
        module, _, name = ENTRIES[request["entry"]].partition(":")
        answer = {"ok": getattr(importlib.import_module(module), name)(request["args"])}
    except ServiceError as exc:
        answer = _error(exc.status, exc.code, exc.message, exc.details)
    except MemoryError:
        pass  # answered below, once the exception (and the memory its frames hold) is gone
    if answer is None:
        gib = int(request["memory_bytes"]) / (1 << 30)
        message = f"the import needed more memory than its limit of {gib:g} GiB (setting IMPORT_MEMORY_BYTES)"
        answer = _error(422, "resource_limit_exceeded", message, [{"loc": "file", "message": message}])
    with os.fdopen(answer_fd, "w") as out:
        out.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
