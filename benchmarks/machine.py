"""What every benchmark records about the machine it ran on: who else used the CPU while it
was timing (`CpuWindow`, `noise_summary`), the torch build and CPU (`environment`), and
the matmul ceiling MFU is quoted against (`matmul_peak`).

These machines are shared and noisy: a figure only means something next to a peer measured
in the same run, and next to how much of the machine other processes took meanwhile.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any

import torch

from models.layers import onednn


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class CpuWindow:
    """CPU seconds that other processes used while a block ran: machine busy time from
    /proc/stat minus this process's own (and its reaped children's) CPU time."""

    HZ = os.sysconf("SC_CLK_TCK")

    def __init__(self) -> None:
        self.start = self._read()

    def _read(self) -> tuple[float, float, float, float]:
        own = sum(
            getattr(resource.getrusage(w), f)
            for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
            for f in ("ru_utime", "ru_stime")
        )
        try:
            with open("/proc/stat") as f:  # cpu user nice system idle iowait irq softirq steal ...
                ticks = [int(v) for v in f.readline().split()[1:]]
            busy, steal = (sum(ticks[:3]) + sum(ticks[5:8])) / self.HZ, ticks[7] / self.HZ
        except (OSError, IndexError, ValueError):
            busy = steal = float("nan")
        return time.monotonic(), busy, steal, own

    def stop(self) -> dict[str, float]:
        end = self._read()
        wall, busy, steal, own = (b - a for a, b in zip(self.start, end, strict=True))
        other = busy - own
        cpus = os.cpu_count() or 1
        return {
            "wall_s": round(wall, 3),
            "own_cpu_s": round(own, 3),
            "other_cpu_s": round(other, 3),
            "other_share": round(other / (wall * cpus), 4) if wall > 0 else 0.0,
            "steal_s": round(steal, 3),
        }


NOISY_SHARE = 0.05  # other processes' share of the machine above which a measurement should be rerun


def noise_summary(windows: list[dict[str, float]], run: dict[str, float]) -> dict[str, Any]:
    """Other processes' CPU use summed over the timed blocks, and over the whole run (which also
    counts warmups, and a torch.compile's worker processes as "other")."""
    wall, own, other, steal = (sum(w[k] for w in windows) for k in ("wall_s", "own_cpu_s", "other_cpu_s", "steal_s"))
    cpus = os.cpu_count() or 1
    share = other / (wall * cpus) if wall > 0 else 0.0
    timed = {
        "wall_s": round(wall, 3),
        "own_cpu_s": round(own, 3),
        "other_cpu_s": round(other, 3),
        "other_share": round(share, 4),
        "steal_s": round(steal, 3),
    }
    return {"timed": timed, "whole_run": run, "noisy": share > NOISY_SHARE}


def log_noise(noise: dict[str, Any]) -> None:
    t = noise["timed"]
    log(
        f"other processes used {t['other_cpu_s']:.1f} CPU s during {t['wall_s']:.0f} s of timed steps "
        f"({t['other_share']:.0%} of the machine)" + ("  <- noisy window, rerun" if noise["noisy"] else "")
    )


def onednn_bf16_matmul() -> str:
    """The oneDNN implementation a bf16 matmul runs here (for example brg_matmul:...amx), or why unknown."""
    code = "import torch; a = torch.randn(256, 256, dtype=torch.bfloat16); torch.matmul(a, a)"
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "ONEDNN_VERBOSE": "1"},
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    for line in out.stdout.splitlines():
        parts = line.split(",")
        if len(parts) > 6 and parts[2:6] == ["primitive", "exec", "cpu", "matmul"]:
            return parts[6]
    return "not oneDNN (no verbose matmul line)"


def environment() -> dict[str, Any]:
    impl = onednn_bf16_matmul()
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "cpu_vendor": onednn.cpu_vendor(),
        "onednn_fp32_products": onednn.ENABLED,  # our fp32 training products: oneDNN, or aten's mm (MKL)
        "onednn_bf16_matmul": impl,
        "amx": "amx" in impl,
        "loadavg_at_start": list(os.getloadavg()),
    }


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Best FLOP/s of an n×n×n torch.matmul: the ceiling MFU is measured against."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def runnable_precisions(requested: list[str]) -> list[str]:
    """`requested` without bf16 where this CPU has no bf16 kernels (no AVX-512 BF16 / AMX):
    emulated bf16 is many times slower than fp32, nobody trains that way, and `precision:
    auto` picks fp32 on such a CPU."""
    if "bf16" in requested and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log("this CPU has no bf16 matmul kernels (no AVX-512 BF16 / AMX): bf16 variants skipped")
        return [p for p in requested if p != "bf16"]
    return requested
