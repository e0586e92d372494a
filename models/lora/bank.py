"""Many LoRA adapters over one base in one decoding batch: each row its own adapter or none.

`AdapterBank` keeps, per adapted projection, every adapter's A^T and scale * B^T stacked
along a leading adapter axis, padded to the largest rank
with zeros (which add nothing). A step gathers each row's pair by its adapter index and
adds two batched matmuls, (rows, T, in) @ (rows, in, r) @ (rows, r, out), to the base
projection, so rows of different adapters share every base matmul and the base weights
are never copied. Rows of the base alone (slot 0) take no part: in a batch that has
some, the adapted rows are selected (an index, not a mask), their products computed and
added into their rows of the output (`index_add_`), so a base row's output is the base
projection's, exactly, whatever the adapters hold (a multiplied mask would not do: a NaN
or an infinity times 0 is NaN), and the base needs no stack of zeros. A base-only batch
skips the bank altogether. A serving net runs each of its projections through
`project`, which is the projection alone for a base-only batch and the projection plus
the rows' products otherwise.

A serving net that fuses projections (the Llama path's one qkv and one gate-up matmul)
names each fused group and its members in output order; the group's stacks then hold
every member's A^T side by side, (in, members x r): one matmul for all of them; then each
member's B^T, (r, its out), adds its product into its own slice of the fused output.
Members no adapter targets take no room.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models.layers.projection import Projection
from models.lora.layers import Adapter


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
        self.a: dict[str, Tensor] = {}  # module path -> (n, in, r)
        # module path -> [(0, (n, r, out))], scale folded in; a fused group's key -> one
        # (offset of the member's output slice, its B^T stack) per member an adapter targets
        self.b: dict[str, list[tuple[int, Tensor]]] = {}
        self.rank = 0
        self._rows: Tensor | None = None  # the last rows seen: the adapted ones and their stack indices
        self._adapted: Tensor | None = None
        self._idx: Tensor | None = None

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
        tensors = [*self.a.values(), *(b for parts in self.b.values() for _, b in parts)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def _stack(self) -> None:
        self._rows = None
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
        """Stacks for `members` (the fused output's parts, in order), room for the `used` ones:
        their A^T side by side, and each one's B^T with the offset of its output slice."""
        fan_in = self.shapes[members[0]][0]
        offsets, out = {}, 0
        for m in members:
            offsets[m] = out
            out += self.shapes[m][1]
        a_t = torch.zeros(len(names), fan_in, rank * len(used), dtype=torch.float32)
        parts = []
        for j, m in enumerate(used):
            lo, width = j * rank, self.shapes[m][1]
            b_t = torch.zeros(len(names), rank, width, dtype=torch.float32)
            for i, name in enumerate(names, start=1):
                adapter = self.adapters[name]
                if m in adapter.layers:
                    a, b = adapter.layers[m]
                    r = a.size(0)
                    a_t[i - 1, :, lo : lo + r] = a.t()
                    b_t[i - 1, :r] = b.t() * adapter.scaling
            parts.append((offsets[m], b_t.to(self.device, self.dtype)))
        self.a[key] = a_t.to(self.device, self.dtype)
        self.b[key] = parts
        self.rank = rank

    def project(self, proj: Projection, path: str, x: Tensor, rows: Tensor | None, gelu: bool = False) -> Tensor:
        """`proj(x)` with each row's adapter product added (`add_delta`), GELU-tanh after
        them with `gelu`; `rows` None: the base alone, `proj(x, gelu)` (the bank is not touched)."""
        if rows is None:
            return proj(x, gelu)
        y = self.add_delta(path, x, proj(x), rows)
        return F.gelu(y, approximate="tanh") if gelu else y

    def add_delta(self, path: str, x: Tensor, y: Tensor, rows: Tensor) -> Tensor:
        """y + each row's adapter product of x; x (rows*T, in), y (rows*T, out), rows (rows,).
        `path`: a projection's module path, or a fused group's key."""
        a = self.a.get(path)
        if a is None:
            return y
        n, parts = rows.size(0), self.b[path]
        adapted, idx = self._select(rows)
        x3, y3 = x.view(n, -1, x.size(-1)), y.view(n, -1, y.size(-1))
        if adapted is not None:
            x3 = x3.index_select(0, adapted)
        low = torch.bmm(x3, a[idx])
        whole = len(parts) == 1 and parts[0][1].size(-1) == y.size(-1)  # one projection: the whole output
        r = self.rank
        for j, (offset, b) in enumerate(parts):
            out = y3 if whole else y3[:, :, offset : offset + b.size(-1)]
            delta = torch.bmm(low if whole else low[:, :, j * r : (j + 1) * r], b[idx])
            if adapted is None:
                out.add_(delta)
            else:
                out.index_add_(0, adapted, delta)
        return y

    def _select(self, rows: Tensor) -> tuple[Tensor | None, Tensor]:
        """The positions of the adapted rows of `rows` (None: every row is adapted) and their
        stack indices; worked out once per forward pass (every projection gets the same
        `rows` tensor, made anew for each pass)."""
        if rows is not self._rows:
            base = rows == 0
            self._rows = rows
            self._adapted = base.logical_not().nonzero().squeeze(1) if bool(base.any()) else None
            self._idx = rows - 1 if self._adapted is None else rows[self._adapted] - 1
        assert self._idx is not None
        return self._adapted, self._idx
