"""The preference objective in a run (docs/spec.md, `preference`): its references, its step,
its evaluation and what its checkpoints hold. Pipeline (models/training/pipeline.py) owns one
`Preferences` and calls `enter` as each segment starts, `step` for a preference segment's
steps, `tensors` and `restore` with its checkpoints.

As a stage with preference parts (a `preference` stage, or multistep phases of that objective)
starts, its references are made (models/training/reference.py), the reference log-probs a part
precomputes are computed over its whole data, and those of every preference validation set the
stage reads (or no stage reads) over its evaluation sample: an evaluation then measures the
model against the same reference at every step, and so does the finished model's. Those
log-probs and, while a stage trains against it, the frozen copy, are in the checkpoints: a
resumed run continues with the very same reference.

One step: grad_accum micro-batches of batch_size pairs; each the policy's log-probs over its 2B
rows in one forward pass, the reference's (precomputed, or a forward pass without gradients),
the loss (models/training/preference_losses.py), then the update every objective takes
(models.training.stages.update). Its train.step event adds TRL's metrics (rewards/*, logps/*).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from models.data.preference_stream import PairBatch, PreferenceStream
from models.data.streams import Batch, Stream
from models.data.tokenizer import Tokenizer
from models.errors import TrainingError
from models.families.build import Model
from models.spec import JobSpec
from models.training.adapters import RunAdapters
from models.training.evaluate import EVAL_TOKENS
from models.training.precision import Weights
from models.training.preference_losses import needs_reference, pair_logps, preference_loss, summarize
from models.training.reference import Source, adapters_off, frozen_copy, load_reference
from models.training.stages import Segment, StepResult, Trainee, update

if TYPE_CHECKING:  # (torch.distributed loads only in a run of several processes)
    from models.training.distributed import Group

AHEAD_BATCH = 16  # pairs per forward pass when reference log-probs are computed ahead


class Host(Protocol):
    """What Preferences reads of its run (models.training.pipeline.Pipeline)."""

    spec: JobSpec
    segments: list[Segment]
    adapters: RunAdapters
    resolve: Callable[[str], Path]
    streams: dict[str, Stream]
    val_streams: dict[str, Stream]

    @property
    def model(self) -> Model: ...

    @property
    def tok(self) -> Tokenizer: ...

    def autocast(self) -> AbstractContextManager[object]: ...

    def to_device(self, b: Batch) -> Batch: ...


class Preferences:
    def __init__(self, host: Host):
        self.host = host
        self.stage: int | None = None  # the stage whose references are live
        self.sources: dict[str, Source] = {}  # by segment key: the reference a step reads
        self.copy_state: dict[str, Tensor] | None = None  # a checkpoint's frozen copy, until used

    def parts(self, stage_index: int) -> list[Segment]:
        """The stage's preference segments, one per stage or phase."""
        segs = [s for s in self.host.segments if s.stage_index == stage_index and s.objective == "preference"]
        return list({s.key: s for s in reversed(segs)}.values())[::-1]

    def val_part(self, name: str, stage_index: int) -> Segment | None:
        """The part whose loss and reference an evaluation of preference data `name` measures
        during stage `stage_index`: the first part that reads it, or for data no part reads the
        stage's first preference part; None where the stage has no say."""
        read = {s.part.data for s in self.host.segments if s.objective == "preference"}
        parts = self.parts(stage_index)
        mine = [s for s in parts if s.part.data == name]
        return mine[0] if mine else (parts[0] if parts and name not in read else None)

    def val_streams(self) -> Iterator[tuple[str, PreferenceStream]]:
        for name, stream in self.host.val_streams.items():
            if isinstance(stream, PreferenceStream):
                yield name, stream

    # --- a stage's references -------------------------------------------------------------------

    def enter(self, seg_i: int, first_step: int) -> None:
        """Segment `seg_i` starts (at its step `first_step`): the references of its stage, made
        as the stage starts, or taken from the checkpoint a run resumed from."""
        seg = self.host.segments[seg_i]
        if self.stage == seg.stage_index:
            return
        self.stage, self.sources = seg.stage_index, {}
        for i in range(seg.stage_index + 1):  # each preference validation set's loss, as of this stage
            for name, stream in self.val_streams():
                part = self.val_part(name, i)
                stream.loss = part.part.loss if part is not None else stream.loss  # type: ignore[assignment]
        parts = self.parts(seg.stage_index)
        if not parts:
            return
        fresh = seg.stage_offset == 0 and first_step == 0
        default: Source | None = None
        explicit: dict[str, Source] = {}
        for p in parts:
            ref = getattr(p.part, "reference", None)
            if not needs_reference(p.part.loss):  # type: ignore[arg-type]
                continue
            if ref is None:
                default = default or self.default_source(seg.stage_index, fresh)
                self.sources[p.key] = default
            else:
                if ref.model not in explicit:
                    m = load_reference(ref, p.loc, self.host.resolve, self.host.tok, self.host.model)
                    explicit[ref.model] = Source(model=m, explicit=True)
                self.sources[p.key] = explicit[ref.model]
        if fresh:
            self.compute_ahead(parts)
        live = {p.key for p in parts if p.key in self.sources and not getattr(p.part, "precompute_reference", False)}
        self.sources = {k: v for k, v in self.sources.items() if k in live}  # precomputed only: freed
        self.copy_state = None

    def default_source(self, stage_index: int, fresh: bool) -> Source:
        on = adapters_off(self.host.segments, self.host.adapters, stage_index)
        if on is not None:
            return Source(applied=on)
        if not fresh and self.copy_state is None:  # resumed where every part had precomputed its reference
            return Source()
        return Source(model=frozen_copy(self.host.model, None if fresh else self.copy_state))

    @torch.no_grad()
    def compute_ahead(self, parts: list[Segment]) -> None:
        """Reference log-probs of what the stage's parts precompute, and of the preference
        validation sets the stage measures."""
        h = self.host
        for p in parts:
            stream = h.streams[p.key]
            if getattr(p.part, "precompute_reference", False) and p.key in self.sources:
                assert isinstance(stream, PreferenceStream)
                stream.ref = self.ahead(self.sources[p.key], stream, stream.all_batches(AHEAD_BATCH))
        for name, stream in self.val_streams():
            part = self.val_part(name, parts[0].stage_index)
            if part is None:
                continue
            source = self.sources.get(part.key)
            if source is None or not needs_reference(part.part.loss):  # type: ignore[arg-type]
                stream.ref = None
            else:
                stream.ref = self.ahead(source, stream, stream.eval_batches(AHEAD_BATCH, EVAL_TOKENS))

    def ahead(self, source: Source, stream: PreferenceStream, batches: Iterator[PairBatch]) -> Tensor:
        out = torch.full((len(stream.seqs), 2), float("nan"))
        stream.ref = None  # (what the batches carry: the new values are computed here)
        for b in batches:
            batch = self.host.to_device(b)
            assert isinstance(batch, PairBatch) and b.pair_ids is not None
            out[b.pair_ids] = source.logps(self.host.model, batch, self.host.autocast).cpu()
        return out

    # --- checkpoints ------------------------------------------------------------------------------

    def tensors(self) -> dict[str, Tensor]:
        """What a checkpoint keeps: computed reference log-probs, and a live frozen copy."""
        out = {}
        for key, stream in self.host.streams.items():
            if isinstance(stream, PreferenceStream) and stream.ref is not None:
                out[f"pref/train/{key}"] = stream.ref
        for name, stream in self.val_streams():
            if stream.ref is not None:
                out[f"pref/val/{name}"] = stream.ref
        copies = {id(s.model): s.model for s in self.sources.values() if s.model is not None and not s.explicit}
        for m in copies.values():
            out.update({f"pref/copy/{k}": v for k, v in m.state_dict().items()})
        return out

    def restore(self, tensors: dict[str, Tensor]) -> None:
        for key, stream in self.host.streams.items():
            if isinstance(stream, PreferenceStream):
                stream.ref = tensors.get(f"pref/train/{key}")
        for name, stream in self.val_streams():
            stream.ref = tensors.get(f"pref/val/{name}")
        copy = {k[10:]: v for k, v in tensors.items() if k.startswith("pref/copy/")}
        self.copy_state, self.stage = copy or None, None

    # --- the step -----------------------------------------------------------------------------------

    def step(
        self,
        model: Model,
        weights: Weights,
        t: Trainee,
        stream: Stream,
        seg: Segment,
        step: int,
        lr: float,
        autocast: Callable[[], AbstractContextManager[object]],
        to_device: Callable[[Batch], Batch],
        group: Group | None = None,
    ) -> StepResult:
        """One optimizer step of preference segment `seg` (as models.training.stages.train_step)."""
        if group is not None:
            raise TrainingError("user_error", f"{seg.loc}: preference objectives train in one process")
        loss_spec = seg.part.loss
        total, tokens, stats = torch.zeros(()), 0, []
        for _ in range(seg.grad_accum):
            batch = to_device(stream.next_batch(seg.batch_size))
            assert isinstance(batch, PairBatch)
            tokens += batch.tokens
            ref = None
            if needs_reference(loss_spec):  # type: ignore[arg-type]
                ref = batch.ref if batch.ref is not None else self.sources[seg.key].logps(model, batch, autocast)
            with autocast():
                logps = pair_logps(model, batch, with_nll=loss_spec.type == "orpo")
            loss, s = preference_loss(loss_spec, logps, ref)  # type: ignore[arg-type]
            (loss / seg.grad_accum).backward()
            total += loss.detach().float().cpu()
            stats.append(s)
        value, norm = update(weights, t, seg, step, lr, total)
        return StepResult(value, norm, tokens, summarize(stats))
