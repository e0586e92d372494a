"""The training run of one spec (models.training.run.run drives it): tokenizer → stages → final model.

Workdir layout: `spec.json`, `tokenizer/`, `checkpoints/step-NNNNNNNNN/`, `model/`.
A checkpoint holds the model, every live optimizer, the RNG states and each data
stream's position, so a resumed run produces the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models import events
from models.data import streams as data
from models.data.chat import ChatFormat
from models.data.chat_records import save_chat_format
from models.data.tokenizer import Tokenizer
from models.errors import TrainingError
from models.families.build import Model, build_model, config_from_spec
from models.formats.load import chat_format_of, load_model
from models.formats.native import describe, save_model
from models.lora import layers as lora
from models.spec import JobSpec, block_errors, training_block
from models.training import checkpoint
from models.training.adapters import RunAdapters
from models.training.evaluate import measure
from models.training.optim import build_optimizer, lr_factor, select_trainable
from models.training.precision import Weights, resolve_device, resolve_precision
from models.training.stages import Segment, Trainee, plan, train_step

EventSink = Callable[[events.Event], None]
# Given a staged checkpoint, its final directory and its `checkpoint.saved` event: make it
# resumable (register it, move it into place, emit the event) or raise to stop the run.
PublishHook = Callable[[Path, Path, events.Event], None]


@dataclass
class RunResult:
    model_dir: Path
    steps: int
    evaluation: dict[str, dict[str, float]]


class Pipeline:
    def __init__(
        self,
        spec: JobSpec,
        workdir: Path,
        on_event: EventSink | None,
        should_stop: Callable[[], bool] | None,
        resolve: Callable[[str], Path],
        publish: PublishHook | None = None,
        staging: Path | None = None,
    ):
        self.spec, self.workdir = spec, workdir
        # With a publish hook, checkpoints and the final model are written under `staging`
        # (one run's own folder) and only the hook moves them where others read them.
        self.publish, self.staging = publish, staging or workdir
        self.on_event = on_event or (lambda e: None)
        self.should_stop = should_stop or (lambda: False)
        self.resolve = resolve
        self.device = resolve_device(spec.device)
        self.dtype = resolve_precision(spec.precision, self.device)
        if self.dtype == torch.float16:
            raise TrainingError("user_error", "precision: fp16 training is not supported yet; use bf16")
        self.segments = plan(spec.stages)
        self.ckpt_root = workdir / "checkpoints"
        self.global_step, self.elapsed = 0, 0.0
        self.saved_step = -1  # the step of the newest checkpoint this run wrote or resumed from
        self.position = (0, 0)  # (segment index, steps done in it)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}  # by segment key, for the current stage
        self.evaluations: list[dict[str, Any]] = []
        self.last_eval: dict[str, dict[str, Any]] = {}  # per data name: the newest measurement
        self.adapters = RunAdapters(spec, self.segments)

    # --- events ----------------------------------------------------------------------------

    def emit(self, type_: events.EventType, seg: Segment | None, payload: dict[str, Any]) -> None:
        stage: events.StageRef | None = None if seg is None else {"index": seg.stage_index, "name": seg.stage.name}
        self.on_event(events.make(type_, self.global_step, payload, stage))

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def to_device(self, b: data.Batch) -> data.Batch:
        if self.device.type == "cpu":
            return b
        d = self.device
        return data.Batch(b.idx.to(d), b.targets.to(d), b.completion_targets.to(d), b.tokens)

    # --- setup ------------------------------------------------------------------------------

    def load_data(self) -> None:
        self.train_sets, self.val_sets = data.load_splits(self.spec.data, self.spec.seed, self.resolve)
        for i, seg in enumerate(self.segments):
            if seg.objective == "finetune" and self.train_sets[seg.part.data].kind == "text":
                raise TrainingError(
                    "user_error",
                    f"stages.{i}: a finetune objective needs supervised records, "
                    f"but data '{seg.part.data}' is a text corpus",
                )

    def adopt(self, model: Model) -> None:
        """Make `model` the one this run trains, on its device, in its precision."""
        self.model = model.to(self.device).train()
        # bf16 on the CPU: a bf16 model with fp32 masters instead of autocast (see models/training/precision.py).
        pure_bf16 = self.dtype == torch.bfloat16 and self.device.type == "cpu"
        self.weights = Weights(self.model, torch.bfloat16 if pure_bf16 else None)
        if pure_bf16:
            self.dtype = None

    def build_model(self) -> None:
        init = self.spec.model.init_from
        tok_dir = self.workdir / "tokenizer"
        torch.manual_seed(self.spec.seed)
        # chat format: a base model with a chat template trains on records rendered by it (models/data/chat.py)
        self.chat: ChatFormat | None = None
        if init is not None:
            source = self.resolve(init.model)
            self.model, self.tok = load_model(source, dropout=self.spec.model.dropout)
            bad = block_errors(self.spec, self.model.config.n_layer)
            if bad:
                raise TrainingError("user_error", "; ".join(f"{e['loc']}: {e['message']}" for e in bad))
            self.chat = chat_format_of(source)
            if not (tok_dir / "tokenizer.json").exists():  # the run's tokenizer, beside its checkpoints
                self.tok.save(tok_dir)
                if self.chat is not None:  # and its chat format, for the checkpoints served
                    save_chat_format(tok_dir, self.chat)
        else:
            if (tok_dir / "tokenizer.json").exists():
                self.tok = Tokenizer.load(tok_dir)
            else:
                assert self.spec.tokenizer is not None
                texts = [t for n in self.spec.tokenizer.train_on for t in self.train_sets[n].as_texts()]
                self.tok = Tokenizer.train(texts, self.spec.tokenizer.vocab_size)
                self.tok.save(tok_dir)
            m = self.spec.model
            self.model = build_model(config_from_spec(m, self.tok.vocab_size))
        self.adapters.create(self.model)
        self.adopt(self.model)
        block = training_block(self.spec.model, self.model.config.block_size)
        self.streams: dict[str, data.Stream] = {}
        protos: dict[str, data.Stream] = {}
        for seg in self.segments:
            if seg.key not in self.streams:
                name = seg.part.data
                if name not in protos:
                    train = self.train_sets[name]
                    protos[name] = data.make_stream(train, self.tok, block, self.spec.seed, name, self.chat)
                self.streams[seg.key] = data.fork(protos[name], f"{name}/{seg.key}")
        self.val_streams = {
            name: data.make_stream(ds, self.tok, block, self.spec.seed, f"{name}/val", self.chat)
            for name, ds in self.val_sets.items()
            if ds.num_records
        }

    def trainee(self, seg: Segment) -> Trainee:
        """Unfreeze what `seg` trains; its optimizer is made on first use and kept for the stage.

        With an adapter, the base weights train only where `trainable` is given explicitly."""
        adapter = self.adapters.of.get(seg.key)
        explicit = adapter is None or "trainable" in seg.part.model_fields_set
        params = select_trainable(self.model, seg.part.trainable if explicit else [], adapter)
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
        weights = self.weights.state_dict()
        if self.adapters.base_frozen:  # the base is rebuilt from init_from (or the seed) on resume
            weights = {k: v for k, v in weights.items() if lora.is_adapter_param(k)}
        tensors = {f"model/{k}": v for k, v in weights.items()}
        tensors["rng/torch"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng/cuda"] = torch.cuda.get_rng_state(self.device)
        metas = {}
        for key, opt in self.optimizers.items():
            t, metas[key] = checkpoint.split_optimizer_state(f"opt/{key}", opt.state_dict())
            tensors.update(t)
        seg_i, done = self.position
        state = {
            "version": 1,
            "segment": seg_i,
            "segment_step": done,
            "global_step": self.global_step,
            "elapsed_s": self.elapsed,
            "streams": {k: s.state() for k, s in self.streams.items()},
            "optimizers": metas,
            "evaluations": self.evaluations,
            "base": "rebuilt" if self.adapters.base_frozen else "saved",
            "model": describe(self.model.config, self.tok),
        }
        keep = self.spec.checkpointing.keep_last
        seg = self.segments[min(seg_i, len(self.segments) - 1)]
        if self.publish is not None:
            path = checkpoint.checkpoint_dir(self.ckpt_root, self.global_step)
            staged = checkpoint.stage_checkpoint(self.staging / "checkpoints", self.global_step, tensors, state)
            ref: events.StageRef = {"index": seg.stage_index, "name": seg.stage.name}
            payload = {"path": str(path), "global_step": self.global_step}
            self.publish(staged, path, events.make("checkpoint.saved", self.global_step, payload, ref))
            return path
        path = checkpoint.save_checkpoint(self.ckpt_root, self.global_step, tensors, state, keep)
        self.emit("checkpoint.saved", seg, {"path": str(path), "global_step": self.global_step})
        return path

    def restore(self, path: Path) -> None:
        tensors, state = checkpoint.load_checkpoint(path)
        weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
        if state.get("base") == "rebuilt":
            weights = {**self.weights.state_dict(), **weights}
        self.weights.load_state_dict(weights)
        torch.set_rng_state(tensors["rng/torch"])
        if "rng/cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng/cuda"], self.device)
        self.position = (state["segment"], state["segment_step"])
        self.global_step, self.elapsed = state["global_step"], state["elapsed_s"]
        self.saved_step = self.global_step
        self.evaluations = state["evaluations"]
        for key, s in state["streams"].items():
            self.streams[key].load_state(s)
        for key, meta in state["optimizers"].items():
            seg = next(s for s in self.segments if s.key == key)
            trainee = self.trainee(seg)
            trainee.optimizer.load_state_dict(checkpoint.join_optimizer_state(f"opt/{key}", tensors, meta))

    # --- evaluation -------------------------------------------------------------------------

    def evaluate_data(self, seg: Segment | None, name: str, with_tasks: bool) -> dict[str, Any]:
        result = self.last_eval.get(name)
        if result is None or result["step"] != self.global_step or (with_tasks and not result["tasks"]):
            result = {"step": self.global_step, "tasks": with_tasks, "metrics": self.measure(name, with_tasks)}
            self.last_eval[name] = result
        metrics: dict[str, Any] = result["metrics"]
        self.emit("eval", seg, metrics)
        stage = None if seg is None else seg.stage.name
        self.evaluations.append(
            {"stage": stage, "step": self.global_step, **{k: v for k, v in metrics.items() if k != "samples"}}
        )
        return metrics

    def measure(self, name: str, with_tasks: bool) -> dict[str, Any]:
        """Validation loss (and task metrics) of the model as it is now, on data `name`."""
        examples = self.val_sets[name].examples if with_tasks else []
        with self.autocast():
            result = measure(
                self.model, self.tok, self.val_streams[name], examples, self.spec.evaluation, self.to_device, self.chat
            )
        self.model.train()
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
            if stage_start:
                self.emit("stage.started", seg, {"type": seg.stage.type, "steps": seg.stage_steps})
                for name in self.stage_data(seg):
                    self.evaluate_data(seg, name, with_tasks=False)
            trainee = self.trainee(seg)
            base_lr = seg.part.optimizer.lr
            for s in range(first_step, seg.steps):
                t0 = time.perf_counter()
                lr = base_lr * lr_factor(seg.schedule, seg.stage_offset + s, seg.stage_steps)
                r = train_step(
                    self.model,
                    self.weights,
                    trainee,
                    self.streams[seg.key],
                    seg,
                    self.global_step + 1,
                    lr,
                    self.autocast,
                    self.to_device,
                )
                self.global_step += 1
                self.position = (seg_i, s + 1)
                dt = time.perf_counter() - t0
                self.emit(
                    "train.step",
                    seg,
                    {
                        "loss": round(r.loss, 6),
                        "lr": lr,
                        "grad_norm": round(r.grad_norm, 6),
                        "tokens_per_s": round(r.tokens / dt, 1),
                        "phase": seg.label,
                    },
                )
                self.elapsed = time.monotonic() - began
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
        state = self.weights.state_dict()
        names = self.adapters.names
        adapters = {n: lora.extract(self.model, n, state) for n in names}
        merged = lora.merged_state(state, list(adapters.values()))
        info = {
            "name": self.spec.name,
            "steps": self.global_step,
            "created_at": events.timestamp(),
            "parameters": sum(v.numel() for v in merged.values()),
        }
        if adapters:
            info["adapters"] = names
        save_model(model_dir, merged, self.model.config, self.tok, info)
        self.adapters.save(model_dir, state, adapters, self.model, self.tok, self.global_step)
        if self.chat is not None:
            save_chat_format(model_dir, self.chat)
        checkpoint.write_json(model_dir / "evaluation.json", {"final": final, "history": self.evaluations})
        return RunResult(model_dir, self.global_step, final)
