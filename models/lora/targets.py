"""Which linear layers a LoRA `targets` entry names, per architecture.

Targets are roles (`attention`, `mlp`) or single projections. Each architecture lists
the projections it has, as module paths inside one block; a projection it lacks (`q` on
GPT, whose q, k and v are one fused `c_attn`) is refused with the ones it does have.
No torch here, so the spec can check targets without importing the model code.
"""

from __future__ import annotations

ROLES = ("attention", "mlp")

# arch -> (block prefix, {projection: module path inside a block}, {role: projections})
ARCHS: dict[str, tuple[str, dict[str, str], dict[str, list[str]]]] = {
    "gpt": (
        "transformer.h.{i}.",
        {"qkv": "attn.c_attn", "o": "attn.c_proj", "fc": "mlp.c_fc", "proj": "mlp.c_proj"},
        {"attention": ["qkv", "o"], "mlp": ["fc", "proj"]},
    ),
    "llama": (
        "model.layers.{i}.",
        {
            "q": "self_attn.q_proj",
            "k": "self_attn.k_proj",
            "v": "self_attn.v_proj",
            "o": "self_attn.o_proj",
            "gate": "mlp.gate_proj",
            "up": "mlp.up_proj",
            "down": "mlp.down_proj",
        },
        {"attention": ["q", "k", "v", "o"], "mlp": ["gate", "up", "down"]},
    ),
}

ALL_TARGETS = sorted({*ROLES, *(p for _, projs, _ in ARCHS.values() for p in projs)})


def target_error(arch: str, target: str) -> str | None:
    """Why `target` cannot be adapted on `arch`, or None if it can."""
    if arch not in ARCHS:
        return f"adapters are not available for arch '{arch}' (available: {', '.join(sorted(ARCHS))})"
    _, projs, _ = ARCHS[arch]
    if target in ROLES or target in projs:
        return None
    hint = " (GPT's q, k and v are one fused projection: use 'qkv')" if arch == "gpt" and target in "qkv" else ""
    choices = ", ".join([*ROLES, *projs])
    return f"'{target}' is not a projection of arch {arch}{hint}; choose from {choices}"


def projections(arch: str, targets: list[str]) -> list[str]:
    """The projection names `targets` cover on `arch`, in the arch's order, without repeats."""
    _, projs, roles = ARCHS[arch]
    wanted = {p for t in targets for p in roles.get(t, [t])}
    return [p for p in projs if p in wanted]


def module_paths(arch: str, n_layer: int, targets: list[str]) -> list[str]:
    """Full module paths (`transformer.h.0.attn.c_attn`, ...) of every targeted layer."""
    prefix, projs, _ = ARCHS[arch]
    names = projections(arch, targets)
    return [prefix.format(i=i) + projs[p] for i in range(n_layer) for p in names]
