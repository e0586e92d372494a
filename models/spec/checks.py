"""Checks of a job spec beyond its fields: `parse_spec`, the cross-field checks, and the
adapter checks (targets the architecture has, shared adapter names that agree).

`models.spec` re-exports everything here, so callers import from `models.spec` alone.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from models.errors import SpecError
from models.families import FAMILIES, family, lora_target_error
from models.spec.job import AdapterSpec, JobSpec, MultistepStage, Stage, _Training, block_range

# --- parsing ---------------------------------------------------------------------------


def _loc(parts: tuple[int | str, ...]) -> str:
    # pydantic puts the discriminator tag into the path ("stages.0.pretrain.steps"); drop it.
    tags = {"pretrain", "finetune", "multistep", "causal_lm", "cross_entropy", "sgd", "adam", "adamw"}
    if len(parts) > 1 and parts[0] == "model" and parts[1] in FAMILIES:
        parts = (parts[0], *parts[2:])
    if len(parts) > 2 and parts[:2] == ("model", "rope_scaling") and parts[2] in ("llama3", "linear"):
        parts = (*parts[:2], *parts[3:])
    kept = [str(p) for i, p in enumerate(parts) if not (i > 0 and isinstance(parts[i - 1], int) and p in tags)]
    kept = [p for i, p in enumerate(kept) if not (p in tags and i > 0 and kept[i - 1] in ("loss", "optimizer"))]
    kept = [p for p in kept if p != "[key]"]  # a bad mapping key is reported at the key itself
    return ".".join(kept) or "(root)"


def parse_spec(raw: Any) -> JobSpec:
    """Validate a decoded spec (dict) and return it, or raise `SpecError` with every problem."""
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as exc:
        errors = [{"loc": _loc(tuple(e["loc"])), "message": e["msg"]} for e in exc.errors()]
        for e in errors:
            if e["loc"] == "model.arch" and e["message"].startswith("Input should be"):
                e["message"] = "Input should be " + " or ".join(f"'{a}'" for a in FAMILIES)
        raise SpecError(errors + _raw_reference_errors(raw, {e["loc"] for e in errors})) from None
    problems = cross_field_errors(spec)
    if problems:
        raise SpecError(problems)
    return spec


def _blocks_out_of_range(names: list[str], n_layer: int) -> str | None:
    for name in names:
        found = block_range(name)
        if found is None:
            continue
        lo, hi = found
        if lo > hi:
            return f"'{name}': range start is after its end"
        if hi >= n_layer:
            return f"'{name}': the model has blocks 0-{n_layer - 1}"
    return None


def cross_field_errors(spec: JobSpec) -> list[dict[str, str]]:
    """Checks that span fields: names resolve, shapes agree, trainable parts exist."""
    errors: list[dict[str, str]] = []

    def err(loc: str, message: str) -> None:
        errors.append({"loc": loc, "message": message})

    errors += adapter_errors(spec)

    m = spec.model
    errors += family(m.arch).spec_errors(m)
    if m.init_from is None and spec.tokenizer is None:
        err("tokenizer", "required for a new model (only init_from keeps the base model's tokenizer)")
    known = sorted(spec.data)
    if spec.tokenizer is not None:
        for i, name in enumerate(spec.tokenizer.train_on):
            if name not in spec.data:
                err(f"tokenizer.train_on.{i}", f"unknown data name '{name}' (known: {', '.join(known)})")
    seen: set[str] = set()
    for i, stage in enumerate(spec.stages):
        if stage.name in seen:
            err(f"stages.{i}.name", f"duplicate stage name '{stage.name}'")
        seen.add(stage.name)
        parts: list[tuple[str, Any]]
        if isinstance(stage, MultistepStage):
            parts = [(f"stages.{i}.phases.{j}", p) for j, p in enumerate(stage.phases)]
        else:
            parts = [(f"stages.{i}", stage)]
        for loc, part in parts:
            if part.data not in spec.data:
                err(f"{loc}.data", f"unknown data name '{part.data}' (known: {', '.join(known)})")
    if m.init_from is None:  # with init_from, spec.model's n_layer is not the base's: see block_errors
        errors += block_errors(spec, m.n_layer)
    return errors


def training_parts(spec: JobSpec) -> list[tuple[str, _Training]]:
    """(field path, part) of every stage and multistep phase that trains."""
    out: list[tuple[str, _Training]] = []
    for i, stage in enumerate(spec.stages):
        if isinstance(stage, MultistepStage):
            out += [(f"stages.{i}.phases.{j}", p) for j, p in enumerate(stage.phases)]
        else:
            out.append((f"stages.{i}", stage))
    return out


def block_errors(spec: JobSpec, n_layer: int) -> list[dict[str, str]]:
    """`trainable` block selections the model (of `n_layer` blocks) has: spec.model's for a new
    model; with init_from the base's, checked where it is known (the API from the base's
    config, a local run when it loads the base)."""
    errors = []
    for loc, part in training_parts(spec):
        bad = _blocks_out_of_range(part.trainable, n_layer)
        if bad:
            errors.append({"loc": f"{loc}.trainable", "message": bad})
    return errors


def adapter_name(stage: Stage, phase: int | None) -> str:
    """The adapter a stage (phase None) or a multistep phase trains: its `name`, else its own."""
    if isinstance(stage, MultistepStage):
        assert phase is not None
        part: _Training = stage.phases[phase]
        own = f"{stage.name}-{stage.phases[phase].name or f'p{phase}'}"
    else:
        part, own = stage, stage.name
    assert part.adapter is not None
    return part.adapter.name or re.sub(r"[^A-Za-z0-9_-]", "_", own)[:64]


def adapter_parts(spec: JobSpec) -> list[tuple[str, str, AdapterSpec]]:
    """(field path, adapter name, adapter spec) of every stage and phase with an adapter."""
    out = []
    for i, stage in enumerate(spec.stages):
        if isinstance(stage, MultistepStage):
            for j, phase in enumerate(stage.phases):
                if phase.adapter is not None:
                    out.append((f"stages.{i}.phases.{j}.adapter", adapter_name(stage, j), phase.adapter))
        elif stage.adapter is not None:
            out.append((f"stages.{i}.adapter", adapter_name(stage, None), stage.adapter))
    return out


def adapter_errors(spec: JobSpec, base_arch: str | None = None) -> list[dict[str, str]]:
    """Targets the architecture has, and shared names that agree. The architecture is
    spec.model's for a new model; with init_from it is the base's: `base_arch` where the
    caller knows it (the API, from the base model's config), else checked at load time."""
    errors: list[dict[str, str]] = []
    first: dict[str, tuple[str, AdapterSpec]] = {}
    arch = spec.model.arch if spec.model.init_from is None else base_arch
    for loc, name, a in adapter_parts(spec):
        if arch is not None:
            for k, target in enumerate(a.targets):
                why = lora_target_error(arch, target)
                if why:
                    errors.append({"loc": f"{loc}.targets.{k}", "message": why})
        if name in first:
            where, other = first[name]
            for field in ("rank", "alpha", "dropout", "targets"):
                if getattr(a, field) != getattr(other, field):
                    msg = f"adapter '{name}' is shared with {where}, which has {field} {getattr(other, field)}"
                    errors.append({"loc": f"{loc}.{field}", "message": msg})
        else:
            first[name] = (loc, a)
    return errors


def _raw_reference_errors(raw: Any, reported: set[str]) -> list[dict[str, str]]:
    """The name checks of cross_field_errors, run on the raw mapping when fields are invalid
    too, so one pass reports both (fields already reported are skipped)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), dict):
        return []
    known = sorted(str(k) for k in raw["data"])
    refs: list[tuple[str, Any]] = []
    tok, stages = raw.get("tokenizer"), raw.get("stages")
    if isinstance(tok, dict) and isinstance(tok.get("train_on"), list):
        refs += [(f"tokenizer.train_on.{i}", n) for i, n in enumerate(tok["train_on"])]
    for i, st in enumerate(stages if isinstance(stages, list) else []):
        phases = st.get("phases") if isinstance(st, dict) else None
        parts = [(f"stages.{i}.phases.{j}", p) for j, p in enumerate(phases)] if isinstance(phases, list) else []
        for loc, part in parts or [(f"stages.{i}", st)]:
            if isinstance(part, dict) and "data" in part:
                refs.append((f"{loc}.data", part["data"]))
    return [
        {"loc": loc, "message": f"unknown data name '{name}' (known: {', '.join(known)})"}
        for loc, name in refs
        if isinstance(name, str) and name not in raw["data"] and loc not in reported
    ]
