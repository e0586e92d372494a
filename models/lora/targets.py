"""Which linear layers a LoRA `targets` entry names: a family's table of projections.

Targets are roles (`attention`, `mlp`) or single projections. Each family declares a
`LoraTable` in its config (models/families/<family>/config.py): the module path prefix of a
block, the projections it has (module paths inside one block) and which projections each
role covers. A projection the family lacks (`q` on GPT, whose q, k and v are one fused
`c_attn`) is refused with the ones it does have. No torch here, so the spec can check
targets without importing the model code.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("attention", "mlp")


@dataclass(frozen=True)
class LoraTable:
    arch: str
    block_prefix: str  # "transformer.h.{i}."
    projections: dict[str, str]  # projection name -> module path inside a block
    roles: dict[str, list[str]]  # role -> the projections it covers
    hint: dict[str, str]  # a target this family lacks -> what to use instead

    def target_error(self, target: str) -> str | None:
        """Why `target` cannot be adapted on this family, or None if it can."""
        if target in ROLES or target in self.projections:
            return None
        hint = f" ({self.hint[target]})" if target in self.hint else ""
        choices = ", ".join([*ROLES, *self.projections])
        return f"'{target}' is not a projection of arch {self.arch}{hint}; choose from {choices}"

    def covered(self, targets: list[str]) -> list[str]:
        """The projection names `targets` cover, in the family's order, without repeats."""
        wanted = {p for t in targets for p in self.roles.get(t, [t])}
        return [p for p in self.projections if p in wanted]

    def module_paths(self, n_layer: int, targets: list[str]) -> list[str]:
        """Full module paths (`transformer.h.0.attn.c_attn`, ...) of every targeted layer."""
        names = self.covered(targets)
        return [self.block_prefix.format(i=i) + self.projections[p] for i in range(n_layer) for p in names]

    def owns(self, path: str) -> bool:
        """Whether a module path lies in one of this family's blocks."""
        return path.startswith(self.block_prefix.split("{i}")[0])
