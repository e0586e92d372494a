"""Terminal display of a run, local or followed from the service: a spinner while data loads
and the tokenizer trains, one bar for the whole job (total ETA) and one per stage, all
numbered by the job's step; eval and checkpoint lines; a final summary table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from models.spec import JobSpec

SMOOTHING = 0.1  # weight of the newest step in the tokens/s shown (an exponential average)


class RunDisplay:
    """Consumes events (dicts as the API and events.jsonl have them) and renders them."""

    def __init__(self, spec: JobSpec, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.spec = spec
        self.progress = Progress(
            SpinnerColumn(finished_text=" "),
            TextColumn("[bold]{task.description:<12}"),
            BarColumn(),
            TextColumn("{task.fields[steps]}"),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.offsets = [sum(s.steps for s in spec.stages[:i]) for i in range(len(spec.stages))]
        self.total = spec.total_steps
        self.job = self.progress.add_task("job", total=self.total, steps=self._steps_text(0), stats="")
        self.bars: dict[int, TaskID] = {}
        self.ranges: dict[TaskID, tuple[int, int]] = {}  # a stage bar's first and last job step
        self.preparing: TaskID | None = None
        self.tokens_per_s: float | None = None
        self.resumed_from = 0  # the step a resumed run started at (0: from the start)

    def __enter__(self) -> RunDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._prepared()
        self.progress.stop()

    def _steps_text(self, step: int) -> str:
        return f"step {step}/{self.total}"

    def _prepare(self) -> None:
        if self.preparing is None:
            what = "loading data" + (", training the tokenizer" if self.spec.model.init_from is None else "")
            self.preparing = self.progress.add_task(what, total=None, steps="", stats="")

    def _prepared(self) -> None:
        if self.preparing is not None:
            self.progress.remove_task(self.preparing)
            self.preparing = None

    def _bar(self, index: int, step: int) -> TaskID:
        """The stage's bar, made at its first event; `step` is the job's step before it."""
        if index not in self.bars:
            stage = self.spec.stages[index]
            first, last = self.offsets[index] + 1, self.offsets[index] + stage.steps
            done = max(0, step - self.offsets[index])
            self.bars[index] = self.progress.add_task(stage.name, total=stage.steps, completed=done, steps="", stats="")
            self.ranges[self.bars[index]] = (first, last)
            self._label(self.bars[index], step)
        return self.bars[index]

    def _label(self, bar: TaskID, step: int) -> None:
        first, last = self.ranges[bar]
        self.progress.update(bar, steps=f"step {min(max(step, first - 1), last)} of {first}–{last}")

    def __call__(self, event: dict[str, Any]) -> None:
        kind, stage, data, step = event["type"], event.get("stage"), event.get("data") or {}, event.get("step", 0)
        if kind == "job.started":
            self._prepare()
        elif kind == "train.step" and stage is not None:
            self._prepared()
            bar = self._bar(stage["index"], step - 1)
            rate = float(data.get("tokens_per_s", 0.0))
            self.tokens_per_s = rate if self.tokens_per_s is None else (
                SMOOTHING * rate + (1 - SMOOTHING) * self.tokens_per_s
            )  # fmt: skip
            stats = f"loss {data['loss']:.4f}  lr {data['lr']:.2e}  {self.tokens_per_s:,.0f} tok/s"
            if isinstance(data.get("rewards/accuracies"), int | float):  # a preference stage's step
                stats += f"  acc {data['rewards/accuracies']:.2f}  margin {data.get('rewards/margins', 0.0):.3f}"
            self.progress.update(bar, advance=1, stats=stats)
            self._label(bar, step)
            self.progress.update(self.job, completed=step, steps=self._steps_text(step))
        elif kind == "stage.started" and stage is not None:
            self._prepared()
            self.tokens_per_s = None  # another stage, another speed
            self._bar(stage["index"], step)
        elif kind == "eval":
            self.progress.console.print(eval_line(event), highlight=False)
        elif kind == "checkpoint.saved":
            self.progress.console.print(f"[dim]checkpoint at step {step}: {data.get('path', '')}[/dim]")
        elif kind == "job.restarted":
            self._prepared()
            self.resumed_from = int(data.get("from_step", step))
            self.progress.reset(self.job, total=self.total, completed=self.resumed_from)
            self.progress.update(self.job, steps=self._steps_text(self.resumed_from))
            where = data.get("checkpoint", "")
            self.progress.console.print(f"resuming from step {self.resumed_from} ({where})", highlight=False)
        elif kind in ("job.succeeded", "job.failed", "job.cancelled"):
            self._prepared()


def eval_line(event: dict[str, Any]) -> str:
    data = event["data"]
    where = event["stage"]["name"] if event.get("stage") else "final"
    values = "  ".join(f"{k} {v:.4g}" for k, v in data.items() if isinstance(v, int | float))
    return f"[cyan]eval[/cyan] {where} · step {event['step']} · {data.get('data', '')}: {values}"


def summary_table(evaluation: dict[str, dict[str, float]]) -> Table:
    table = Table(title="final evaluation (validation split)", title_justify="left")
    table.add_column("data")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, metrics in evaluation.items():
        for metric, value in metrics.items():
            table.add_row(name, metric, f"{value:.4f}")
    return table


def print_answer(text: str, finish_reason: str | None, tokens: int | None) -> None:
    """A generation on stdout; when it is empty (or only whitespace), a line on stderr saying
    why, so an empty line is never the whole answer."""
    print(text)
    if text.strip():
        return
    what = "no text" if not text else "only whitespace"
    how = f"finish reason {finish_reason}, " if finish_reason else ""
    count = "?" if tokens is None else str(tokens)
    hint = (
        "the model ended its answer at once"
        if finish_reason == "stop" and not tokens
        else "the tokens it chose decode to nothing visible"
    )
    Console(stderr=True).print(
        f"[yellow]note:[/yellow] the model generated {what} ({how}{count} new tokens): {hint}. "
        "A small model trained from scratch answers few task prompts (README, 'What the example reaches').",
        soft_wrap=True,
    )
