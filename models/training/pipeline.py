"""The training run of one spec (models.training.run.run drives it): tokenizer → stages → final model.

Workdir layout: `spec.json`, `tokenizer/`, `checkpoints/step-NNNNNNNNN/`, `model/`. Setting
up (data, tokenizer, model, streams) is models/training/setup.py, checkpoints (exact resume)
models/training/run_state.py, the evaluation history models/training/eval_log.py, the
final `model/` folder models/training/final.py; a process of a multi-process run, its Group
(models/training/distributed.py, models/training/rank.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from models import events
from models.data import streams as data
from models.data.chat import ChatFormat
from models.data.records import DataFile
from models.data.tokenizer import Tokenizer
from models.errors import TrainingError
from models.families.build import Model
from models.formats.native import describe
from models.spec import JobSpec, training_block
from models.training import checkpoint, run_state, setup
from models.training import final as final_model
from models.training.adapters import RunAdapters
from models.training.eval_log import EvalLog
from models.training.evaluate import measure
from models.training.final import RunResult
from models.training.optim import build_optimizer, lr_factor, select_trainable
from models.training.precision import Weights, resolve_device, resolve_precision
from models.training.preference import Preferences
from models.training.run_state import EventSink, PublishHook
from models.training.stages import Segment, Trainee, plan, train_step

if TYPE_CHECKING:  # (torch.distributed loads only in a run of several processes)
    from models.training.distributed import Group


class Pipeline:
    """One run: constructed complete but empty; `load_data` then `build_model` fill in its data,
    tokenizer, model and streams (run.py calls them, then `restore` on resume, `train`, `finish`).

    With a `group`, one of its processes: all train and evaluate alike; rank 0 alone writes
    tokenizer, checkpoints and model (the others wait) and calls `on_event` and `publish`."""

    def __init__(
        self,
        spec: JobSpec,
        workdir: Path,
        on_event: EventSink | None,
        should_stop: Callable[[], bool] | None,
        resolve: Callable[[str], Path],
        publish: PublishHook | None = None,
        staging: Path | None = None,
        group: Group | None = None,
    ):
        self.spec, self.workdir = spec, workdir
        # With a publish hook, checkpoints and the final model are written under `staging`
        # (one run's own folder) and only the hook moves them where others read them.
        self.publish, self.staging = publish, staging or workdir
        self.on_event: EventSink = on_event or (lambda e: None)
        self.should_stop = should_stop or (lambda: False)
        self.resolve, self.group = resolve, group
        self.device = resolve_device(spec.run_device)
        self.dtype = resolve_precision(spec.precision, self.device)
        if self.dtype == torch.float16:
            raise TrainingError("user_error", "precision: fp16 training is not supported yet; use bf16")
        self.segments = plan(spec.stages)
        self.ckpt_root = workdir / "checkpoints"
        self.global_step, self.elapsed = 0, 0.0
        self.saved_step = -1  # the step of the newest checkpoint this run wrote or resumed from
        self.position = (0, 0)  # (segment index, steps done in it)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}  # by segment key, for the current stage
        self.evals = EvalLog()
        self.adapters = RunAdapters(spec, self.segments)
        self.prefs = Preferences(self)  # the preference objective's references (models/training/preference.py)
        # load_data: each data name's training and validation part
        self.train_sets: dict[str, DataFile] = {}
        self.val_sets: dict[str, DataFile] = {}
        # build_model: the model, its tokenizer and chat format (models/data/chat.py), the
        # training stream of each segment key and the validation stream of each data name
        self._model: Model | None = None
        self._weights: Weights | None = None
        self._tok: Tokenizer | None = None
        self.chat: ChatFormat | None = None
        self.streams: dict[str, data.Stream] = {}
        self.val_streams: dict[str, data.Stream] = {}

    @property
    def model(self) -> Model:
        if self._model is None:
            raise RuntimeError("no model yet: build_model() (or adopt()) first")
        return self._model

    @property
    def weights(self) -> Weights:
        """The model's weights as the optimizers see them (models/training/precision.py)."""
        if self._weights is None:
            raise RuntimeError("no weights yet: adopt() a model first")
        return self._weights

    @property
    def tok(self) -> Tokenizer:
        if self._tok is None:
            raise RuntimeError("no tokenizer yet: build_model() first")
        return self._tok

    # --- events ----------------------------------------------------------------------------

    def emit(self, type_: events.EventType, seg: Segment | None, payload: dict[str, Any]) -> None:
        stage: events.StageRef | None = None if seg is None else {"index": seg.stage_index, "name": seg.stage.name}
        self.on_event(events.make(type_, self.global_step, payload, stage))

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def to_device(self, b: data.Batch) -> data.Batch:
        return b if self.device.type == "cpu" else b.to(self.device)

    # --- setup ------------------------------------------------------------------------------

    def load_data(self) -> None:
        self.train_sets, self.val_sets = setup.load_data(self.spec, self.resolve)

    def adopt(self, model: Model) -> None:
        """Make `model` the one this run trains, on its device, in its precision."""
        self._model = model.to(self.device).train()
        # bf16 on the CPU: a bf16 model with fp32 masters instead of autocast (see models/training/precision.py).
        pure_bf16 = self.dtype == torch.bfloat16 and self.device.type == "cpu"
        low = torch.bfloat16 if pure_bf16 else None
        if self.group is not None and self.group.sharded:  # FSDP keeps the fp32 masters: its shards
            self._model, low = self.group.shard(self.model, low), None
        self._weights = Weights(self.model, low)
        if pure_bf16:
            self.dtype = None

    def build_model(self) -> None:
        with contextlib.nullcontext() if self.group is None else self.group.rank0_first():  # (rank 0 writes tokenizer/)
            model, self._tok, self.chat = setup.tokenizer_and_model(
                self.spec, self.workdir, self.resolve, self.train_sets
            )
        self.adapters.create(model)
        self.adopt(model)
        if self.group is not None:
            self.group.seed(self.spec.seed)
        block = training_block(self.spec.model, self.model.config.block_size)
        self.streams, self.val_streams = setup.make_streams(
            self.spec, self.segments, self.train_sets, self.val_sets, self.tok, block, self.chat
        )

    def trainee(self, seg: Segment) -> Trainee:
        """Unfreeze what `seg` trains; its optimizer is made on first use and kept for the stage.

        With an adapter, the base weights train only where `trainable` names them (base_parts)."""
        adapter = self.adapters.of.get(seg.key)
        params = select_trainable(self.model, seg.part.base_parts, adapter)
        if not params:
            raise TrainingError("user_error", f"{seg.label}: nothing to train")
        opt_params = self.weights.optimizer_params(params)
        if seg.key not in self.optimizers:
            self.optimizers[seg.key] = build_optimizer(seg.part.optimizer, opt_params)
        return Trainee(params, opt_params, self.optimizers[seg.key])

    # --- checkpoints ------------------------------------------------------------------------

    def save(self) -> Path:
        if self.saved_step == self.global_step:  # (a stop right after a checkpoint, or a resume)
            return checkpoint.checkpoint_dir(self.ckpt_root, self.global_step)
        self.saved_step = self.global_step
        seg_i, done = self.position
        progress = {
            "segment": seg_i,
            "segment_step": done,
            "global_step": self.global_step,
            "elapsed_s": self.elapsed,
            "evaluations": self.evals.history,
            "model": describe(self.model.config, self.tok),
        }
        w, g, frozen = self.weights, self.group, self.adapters.base_frozen
        tensors, state = run_state.pack(w, frozen, self.device, self.optimizers, self.streams, progress, g)
        tensors.update(self.prefs.tensors())
        seg = self.segments[min(seg_i, len(self.segments) - 1)]
        stage: events.StageRef = {"index": seg.stage_index, "name": seg.stage.name}
        root, keep = self.ckpt_root, self.spec.checkpointing.keep_last
        return run_state.store(root, tensors, state, stage, keep, self.on_event, self.publish, self.staging, g)

    def restore(self, path: Path) -> None:
        def optimizer_of(key: str) -> torch.optim.Optimizer:
            return self.trainee(next(s for s in self.segments if s.key == key)).optimizer

        state = run_state.unpack(path, self.weights, self.device, self.streams, optimizer_of, self.group)
        self.position = (state["segment"], state["segment_step"])
        self.global_step, self.elapsed = state["global_step"], state["elapsed_s"]
        self.saved_step = self.global_step
        self.evals.history = state["evaluations"]
        self.prefs.restore(state["preference"])

    # --- evaluation -------------------------------------------------------------------------

    def evaluate_data(self, seg: Segment | None, name: str, with_tasks: bool) -> dict[str, Any]:
        metrics = self.evals.measured(self.global_step, name, with_tasks, self.measure)
        self.emit("eval", seg, metrics)
        self.evals.record(None if seg is None else seg.stage.name, self.global_step, metrics)
        return metrics

    def measure(self, name: str, with_tasks: bool) -> dict[str, Any]:
        """Validation loss (and task metrics) of the model as it is now, on data `name`."""
        examples = self.val_sets[name].examples if with_tasks else []
        with self.autocast():
            result = measure(
                self.model, self.tok, self.val_streams[name], examples, self.spec.evaluation, self.to_device, self.chat
            )
        self.model.train()
        if self.group is not None:
            self.group.release(self.model)
        return {"data": name, **result}

    def stage_data(self, seg: Segment) -> list[str]:
        names = [s.part.data for s in self.segments if s.stage_index == seg.stage_index]
        return [n for n in dict.fromkeys(names) if n in self.val_streams]

    # --- the run ----------------------------------------------------------------------------

    def train(self) -> Iterator[None]:
        """Run every remaining step; yields after each, so the caller can stop between steps."""
        start_seg, start_step = self.position
        began = time.monotonic() - self.elapsed
        for seg_i in range(start_seg, len(self.segments)):
            seg = self.segments[seg_i]
            self.adapters.apply(self.model, seg_i)
            first_step = start_step if seg_i == start_seg else 0
            stage_start = seg.stage_offset == 0 and first_step == 0
            self.prefs.enter(seg_i, first_step)
            if stage_start:
                self.emit("stage.started", seg, {"type": seg.stage.type, "steps": seg.stage_steps})
                for name in self.stage_data(seg):
                    self.evaluate_data(seg, name, with_tasks=False)
            trainee = self.trainee(seg)
            base_lr = seg.part.optimizer.lr
            run_step = self.prefs.step if seg.objective == "preference" else train_step
            for s in range(first_step, seg.steps):
                t0 = time.perf_counter()
                lr = base_lr * lr_factor(seg.schedule, seg.stage_offset + s, seg.stage_steps)
                part = (self.model, self.weights, trainee, self.streams[seg.key], seg, self.global_step + 1, lr)
                r = run_step(*part, self.autocast, self.to_device, self.group)
                self.global_step += 1
                self.position = (seg_i, s + 1)
                dt = time.perf_counter() - t0
                metrics = {"loss": round(r.loss, 6), "lr": lr, "grad_norm": round(r.grad_norm, 6), **r.extra}
                self.emit("train.step", seg, {**metrics, "tokens_per_s": round(r.tokens / dt, 1), "phase": seg.label})
                self.elapsed = time.monotonic() - began
                if self.group is not None:  # every rank takes the time limit's decision alike
                    self.elapsed = self.group.agreed(self.elapsed)
                stage_ends = seg.stage_offset + s + 1 == seg.stage_steps  # evaluated just below
                due = self.global_step % self.spec.evaluation.every_steps == 0
                if due and not stage_ends and seg.part.data in self.val_streams:
                    self.evaluate_data(seg, seg.part.data, with_tasks=False)
                if self.global_step % self.spec.checkpointing.every_steps == 0:
                    self.save()
                if self.elapsed > self.spec.max_wall_clock_s:
                    self.save()
                    raise TrainingError(
                        "time_limit",
                        f"max_wall_clock_s ({self.spec.max_wall_clock_s}) reached at step {self.global_step}",
                    )
                yield
            self.position = (seg_i + 1, 0)
            if seg.stage_offset + seg.steps == seg.stage_steps:  # the stage's last segment
                for name in self.stage_data(seg):
                    self.evaluate_data(seg, name, with_tasks=True)
                self.emit("stage.completed", seg, {"steps": seg.stage_steps})
                self.optimizers.clear()

    def finish(self) -> RunResult:
        model_dir = self.staging / "model"
        self.adapters.apply(self.model, len(self.segments) - 1)
        final: dict[str, dict[str, float]] = {}
        for name in self.val_streams:
            result = self.evaluate_data(None, name, with_tasks=True)
            final[name] = {k: v for k, v in result.items() if isinstance(v, float)}
        evaluation = {"final": final, "history": self.evals.history}
        state, steps, g = self.weights.state_dict(), self.global_step, self.group
        state = state if g is None else g.full(state)  # (of several processes: whole, on rank 0)
        if g is None or not g.rank:
            final_model.write_model(
                model_dir, self.spec.name, self.model, state, self.tok, self.chat, self.adapters, steps, evaluation
            )
        return RunResult(model_dir, self.global_step, final)
