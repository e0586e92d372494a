"""Many LoRA adapters over one base in one decoding batch: each row its own adapter or none.

`AdapterBank` keeps, per adapted projection, every adapter's A^T and scale * B^T stacked
along a leading adapter axis (slot 0 all zeros: the base), padded to the largest rank
with zeros (which add nothing). A step gathers each row's pair by its adapter index and
adds two batched matmuls, (rows, T, in) @ (rows, in, r) @ (rows, r, out), to the base
projection, so rows of different adapters share every base matmul and the base weights
are never copied. A base-only batch skips the bank altogether.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.lora import Adapter


class AdapterBank:
    def __init__(self, shapes: dict[str, tuple[int, int]], device: torch.device, dtype: torch.dtype):
        """`shapes`: module path -> (in, out) of every projection an adapter may target."""
        self.shapes, self.device, self.dtype = shapes, device, dtype
        self.adapters: dict[str, Adapter] = {}
        self.slots: dict[str, int] = {}  # adapter name -> its index along the stacked axis
        self.a: dict[str, Tensor] = {}  # module path -> (n + 1, in, r)
        self.b: dict[str, Tensor] = {}  # module path -> (n + 1, r, out), scale folded in

    def add(self, name: str, adapter: Adapter) -> None:
        for path, (a, b) in adapter.layers.items():
            if path not in self.shapes:
                raise ValueError(f"adapter '{name}' targets {path}, which this model cannot adapt")
            if (a.size(1), b.size(0)) != self.shapes[path]:
                raise ValueError(f"adapter '{name}': {path} is {a.size(1)}->{b.size(0)}, the base {self.shapes[path]}")
        self.adapters[name] = adapter
        self._stack()

    def remove(self, name: str) -> None:
        del self.adapters[name]
        self._stack()

    def index(self, name: str | None) -> int:
        return 0 if name is None else self.slots[name]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.a.values(), *self.b.values()))

    def _stack(self) -> None:
        names = list(self.adapters)
        self.slots = {n: i + 1 for i, n in enumerate(names)}
        rank = max((a.rank for a in self.adapters.values()), default=0)
        paths = sorted({p for a in self.adapters.values() for p in a.layers})
        self.a, self.b = {}, {}
        for path in paths:
            fan_in, fan_out = self.shapes[path]
            a_t = torch.zeros(len(names) + 1, fan_in, rank, dtype=torch.float32)
            b_t = torch.zeros(len(names) + 1, rank, fan_out, dtype=torch.float32)
            for i, name in enumerate(names, start=1):
                adapter = self.adapters[name]
                if path in adapter.layers:
                    a, b = adapter.layers[path]
                    a_t[i, :, : a.size(0)] = a.t()
                    b_t[i, : a.size(0)] = b.t() * adapter.scaling
            self.a[path] = a_t.to(self.device, self.dtype)
            self.b[path] = b_t.to(self.device, self.dtype)

    def add_delta(self, path: str, x: Tensor, y: Tensor, rows: Tensor) -> Tensor:
        """y + each row's adapter product of x; x (rows*T, in), y (rows*T, out), rows (rows,)."""
        a = self.a.get(path)
        if a is None:
            return y
        n = rows.size(0)
        low = torch.bmm(x.view(n, -1, x.size(-1)), a[rows])
        return y.add_(torch.bmm(low, self.b[path][rows]).view_as(y))
