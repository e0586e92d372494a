"""Many LoRA adapters over one base in one decoding batch: each row its own adapter or none.

`AdapterBank` keeps, per adapted projection, every adapter's A^T and scale * B^T stacked
along a leading adapter axis (slot 0 all zeros: the base), padded to the largest rank
with zeros (which add nothing). A step gathers each row's pair by its adapter index and
adds two batched matmuls, (rows, T, in) @ (rows, in, r) @ (rows, r, out), to the base
projection, so rows of different adapters share every base matmul and the base weights
are never copied. A base-only batch skips the bank altogether.

A serving net that fuses projections (the Llama path's one qkv and one gate-up matmul)
names each fused group and its members in output order; the group's stacks then hold
every member's pair side by side: A^T as (in, members x r) and B^T block-diagonal,
(members x r, sum of outs), so one pair of matmuls adds each member's product to its own
slice of the fused output. Members no adapter targets take no room.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.lora import Adapter


class AdapterBank:
    def __init__(
        self,
        shapes: dict[str, tuple[int, int]],
        device: torch.device,
        dtype: torch.dtype,
        fused: dict[str, list[str]] | None = None,
    ):
        """`shapes`: module path -> (in, out) of every projection an adapter may target;
        `fused`: a group's key -> its members' paths, in the fused output's order."""
        self.shapes, self.device, self.dtype = shapes, device, dtype
        self.fused = fused or {}
        self.member = {m: key for key, members in self.fused.items() for m in members}
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
        targeted = {p for a in self.adapters.values() for p in a.layers}
        self.a, self.b = {}, {}
        for path in sorted(p for p in targeted if p not in self.member):
            self._stack_group(path, [path], [path], names, rank)
        for key, members in self.fused.items():
            if any(m in targeted for m in members):
                self._stack_group(key, members, [m for m in members if m in targeted], names, rank)

    def _stack_group(self, key: str, members: list[str], used: list[str], names: list[str], rank: int) -> None:
        """Stacks for `members` (the fused output's parts, in order), room for the `used` ones."""
        fan_in = self.shapes[members[0]][0]
        offsets, out = {}, 0
        for m in members:
            offsets[m] = out
            out += self.shapes[m][1]
        a_t = torch.zeros(len(names) + 1, fan_in, rank * len(used), dtype=torch.float32)
        b_t = torch.zeros(len(names) + 1, rank * len(used), out, dtype=torch.float32)
        for j, m in enumerate(used):
            lo, off, width = j * rank, offsets[m], self.shapes[m][1]
            for i, name in enumerate(names, start=1):
                adapter = self.adapters[name]
                if m in adapter.layers:
                    a, b = adapter.layers[m]
                    r = a.size(0)
                    a_t[i, :, lo : lo + r] = a.t()
                    b_t[i, lo : lo + r, off : off + width] = b.t() * adapter.scaling
        self.a[key] = a_t.to(self.device, self.dtype)
        self.b[key] = b_t.to(self.device, self.dtype)

    def add_delta(self, path: str, x: Tensor, y: Tensor, rows: Tensor) -> Tensor:
        """y + each row's adapter product of x; x (rows*T, in), y (rows*T, out), rows (rows,).
        `path`: a projection's module path, or a fused group's key."""
        a = self.a.get(path)
        if a is None:
            return y
        n = rows.size(0)
        low = torch.bmm(x.view(n, -1, x.size(-1)), a[rows])
        return y.add_(torch.bmm(low, self.b[path][rows]).view_as(y))
