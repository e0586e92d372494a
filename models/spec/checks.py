"""Checks of a job spec (docs/spec.md) beyond its fields: `parse_spec`, the cross-field and
adapter checks; the objectives' checks and `data_kind_errors` (one check for the API, the CLI
and the run) are models/spec/objectives.py, `training_parts` models/spec/parts.py. Error paths lose
pydantic's discriminator tags, read off the spec's own unions: a new stage, loss, optimizer
or model family needs no edit here. `models.spec` re-exports everything here."""

from __future__ import annotations

import re
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, Discriminator, Tag, ValidationError
from pydantic.fields import FieldInfo

from models.errors import SpecError
from models.families import family, lora_target_error
from models.spec.job import AdapterSpec, JobSpec, MultistepStage, Phase, PretrainStage, Stage, block_range
from models.spec.objectives import objective_errors
from models.spec.parts import part_loc, training_parts

# --- error paths -----------------------------------------------------------------------


def _union_members(annotation: Any, discriminator: Any = None) -> dict[str, type[BaseModel]]:
    """tag -> member of a discriminated union (behind Optional / Annotated), as pydantic tags
    its error paths: a member's `Tag`, else the `Literal` values of its discriminator field."""
    origin = get_origin(annotation)
    if origin is list:
        return _union_members(get_args(annotation)[0])
    if origin is Annotated:
        inner, *meta = get_args(annotation)
        found = [m.discriminator for m in meta if getattr(m, "discriminator", None) is not None]
        return _union_members(inner, found[-1] if found else discriminator)
    if origin not in (Union, types.UnionType):
        return {}
    args = [a for a in get_args(annotation) if a is not type(None)]
    if len(args) == 1:
        return _union_members(args[0], discriminator)
    key = discriminator.discriminator if isinstance(discriminator, Discriminator) else discriminator
    if key is None:
        return {}
    members: dict[str, type[BaseModel]] = {}
    for member in args:
        if get_origin(member) is Annotated:
            cls, *meta = get_args(member)
            members |= {m.tag: cls for m in meta if isinstance(m, Tag)}
        else:
            members |= dict.fromkeys(get_args(member.model_fields[key].annotation), member)
    return members


def _field_members(f: FieldInfo) -> dict[str, type[BaseModel]]:
    """_union_members of a model field (pydantic keeps a field's own discriminator beside it)."""
    found = [m for m in (f.discriminator, *f.metadata) if isinstance(m, str | Discriminator)]
    return _union_members(f.annotation, found[0] if found else None)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field's type holds (inside lists, Optional, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in get_args(annotation) for m in _models_in(a)]


def _unions_below(models: list[type[BaseModel]]) -> dict[str, tuple[str, ...]]:
    """Every discriminated-union field at any depth of `models`: field name -> its tags."""
    found: dict[str, tuple[str, ...]] = {}
    todo, seen = list(models), set()
    while todo:
        cls = todo.pop(0)
        if cls in seen:
            continue
        seen.add(cls)
        for name, f in cls.model_fields.items():
            members = _field_members(f)
            if members:
                found[name] = tuple(dict.fromkeys([*found.get(name, ()), *members]))
            todo += list(members.values()) or _models_in(f.annotation)
    return found


_MODELS = _field_members(JobSpec.model_fields["model"])
_MODEL_UNIONS = _unions_below(list(_MODELS.values()))  # rope_scaling: llama3, linear
_STAGES = _field_members(JobSpec.model_fields["stages"])
_PART_UNIONS = _unions_below(list(_STAGES.values()))  # loss, optimizer
_TAGS = {*_STAGES, *(t for tags in _PART_UNIONS.values() for t in tags)}


def _loc(parts: tuple[int | str, ...]) -> str:
    # pydantic puts the discriminator tag into the path ("stages.0.pretrain.steps"); drop it.
    if len(parts) > 1 and parts[0] == "model" and parts[1] in _MODELS:
        parts = (parts[0], *parts[2:])
    if len(parts) > 2 and parts[0] == "model" and parts[2] in _MODEL_UNIONS.get(str(parts[1]), ()):
        parts = (*parts[:2], *parts[3:])
    kept = [str(p) for i, p in enumerate(parts) if not (i > 0 and isinstance(parts[i - 1], int) and p in _TAGS)]
    kept = [p for i, p in enumerate(kept) if not (p in _TAGS and i > 0 and kept[i - 1] in _PART_UNIONS)]
    kept = [p for p in kept if p != "[key]"]  # a bad mapping key is reported at the key itself
    return ".".join(kept) or "(root)"


# --- parsing ---------------------------------------------------------------------------


def parse_spec(raw: Any) -> JobSpec:
    """Validate a decoded spec (dict) and return it, or raise `SpecError` with every problem."""
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as exc:
        errors = [{"loc": _loc(tuple(e["loc"])), "message": e["msg"]} for e in exc.errors()]
        for e in errors:
            if e["loc"] == "model.arch" and e["message"].startswith("Input should be"):
                e["message"] = "Input should be " + " or ".join(f"'{arch}'" for arch in _MODELS)
        raise SpecError(errors + _raw_reference_errors(raw, {e["loc"] for e in errors})) from None
    problems = cross_field_errors(spec)
    if problems:
        raise SpecError(problems)
    return spec


# --- cross-field checks ----------------------------------------------------------------


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


def _unknown_data(name: str, known: list[str]) -> str:
    return f"unknown data name '{name}' (known: {', '.join(known)})"


def cross_field_errors(spec: JobSpec) -> list[dict[str, str]]:
    """Checks that span fields: names resolve, shapes agree, trainable parts exist."""
    errors: list[dict[str, str]] = []

    def err(loc: str, message: str) -> None:
        errors.append({"loc": loc, "message": message})

    errors += adapter_errors(spec) + objective_errors(spec)
    r = spec.resources
    if r.device is not None and spec.device != "auto" and r.device != spec.device:
        err("resources.device", f"'{r.device}' contradicts the top-level device '{spec.device}'; set one of them")
    if r.sharding == "fsdp" and r.processes == 1:
        err("resources.sharding", "fsdp shards over processes: set resources.processes to 2 or more")
    m = spec.model
    errors += family(m.arch).spec_errors(m)
    if m.init_from is None and spec.tokenizer is None:
        err("tokenizer", "required for a new model (only init_from keeps the base model's tokenizer)")
    known = sorted(spec.data)
    if spec.tokenizer is not None:
        for i, name in enumerate(spec.tokenizer.train_on):
            if name not in spec.data:
                err(f"tokenizer.train_on.{i}", _unknown_data(name, known))
    seen, parts = set[str](), list(training_parts(spec))
    for i, stage in enumerate(spec.stages):
        if stage.name in seen:
            err(f"stages.{i}.name", f"duplicate stage name '{stage.name}'")
        seen.add(stage.name)
        if stage.batch_size < r.processes:  # every process trains its own rows of each batch
            err(f"stages.{i}.batch_size", f"{stage.batch_size} rows cannot be split over {r.processes} processes")
        for p in parts:
            if p.stage_index == i and p.part.data not in spec.data:
                err(f"{p.loc}.data", _unknown_data(p.part.data, known))
    if m.init_from is None:  # with init_from, spec.model's n_layer is not the base's: see block_errors
        errors += block_errors(spec, m.n_layer)
    return errors


def block_errors(spec: JobSpec, n_layer: int) -> list[dict[str, str]]:
    """`trainable` block selections the model (of `n_layer` blocks) has: spec.model's for a new
    model; with init_from the base's, checked where it is known (the API from the base's
    config, a local run when it loads the base)."""
    errors = []
    for p in training_parts(spec):
        bad = _blocks_out_of_range(p.part.base_parts, n_layer)
        if bad:
            errors.append({"loc": f"{p.loc}.trainable", "message": bad})
    return errors


# --- adapters --------------------------------------------------------------------------


def adapter_name(stage: Stage, phase: int | None) -> str:
    """The adapter a stage (phase None) or a multistep phase trains: its `name`, else its own."""
    if isinstance(stage, MultistepStage):
        assert phase is not None
        part: PretrainStage | Phase = stage.phases[phase]
        own = f"{stage.name}-{stage.phases[phase].name or f'p{phase}'}"
    else:
        part, own = stage, stage.name
    assert part.adapter is not None
    return part.adapter.name or re.sub(r"[^A-Za-z0-9_-]", "_", own)[:64]


def adapter_parts(spec: JobSpec) -> list[tuple[str, str, AdapterSpec]]:
    """(field path, adapter name, adapter spec) of every stage and phase with an adapter."""
    return [
        (f"{p.loc}.adapter", adapter_name(spec.stages[p.stage_index], p.phase_index), p.part.adapter)
        for p in training_parts(spec)
        if p.part.adapter is not None
    ]


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


# --- the name checks on a spec whose fields are invalid --------------------------------


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
        parts = [(part_loc(i, j), p) for j, p in enumerate(phases)] if isinstance(phases, list) else []
        for loc, part in parts or [(part_loc(i, None), st)]:
            if isinstance(part, dict) and "data" in part:
                refs.append((f"{loc}.data", part["data"]))
    return [
        {"loc": loc, "message": _unknown_data(name, known)}
        for loc, name in refs
        if isinstance(name, str) and name not in raw["data"] and loc not in reported
    ]
