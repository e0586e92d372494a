"""Terminal display of a local run: a progress bar per stage, eval tables, a final summary."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from models.spec import JobSpec


class RunDisplay:
    """Consumes pipeline events and renders them; one bar per stage."""

    def __init__(self, spec: JobSpec, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.spec = spec
        self.progress = Progress(
            TextColumn("[bold]{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.bars: dict[int, TaskID] = {}
        self.offsets = [sum(s.steps for s in spec.stages[:i]) for i in range(len(spec.stages))]

    def __enter__(self) -> RunDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _bar(self, stage: dict[str, Any], step: int) -> TaskID:
        i = stage["index"]
        if i not in self.bars:
            total = self.spec.stages[i].steps
            done = max(0, step - self.offsets[i])
            self.bars[i] = self.progress.add_task(stage["name"], total=total, completed=done, loss="-", lr="-", tps="-")
        return self.bars[i]

    def __call__(self, event: dict[str, Any]) -> None:
        kind, stage, data = event["type"], event["stage"], event["data"]
        if kind == "train.step" and stage is not None:
            bar = self._bar(stage, event["step"] - 1)
            self.progress.update(
                bar, advance=1, loss=f"{data['loss']:.4f}", lr=f"{data['lr']:.2e}", tps=f"{data['tokens_per_s']:,.0f}"
            )
        elif kind == "stage.started" and stage is not None:
            self._bar(stage, event["step"])
        elif kind == "eval":
            self.console.print(eval_line(event))
        elif kind == "checkpoint.saved":
            self.console.print(f"[dim]checkpoint at step {event['step']}: {data['path']}[/dim]")
        elif kind == "job.restarted":
            self.console.print(f"resuming from step {data['from_step']} ({data['checkpoint']})")


def eval_line(event: dict[str, Any]) -> str:
    data = event["data"]
    where = event["stage"]["name"] if event["stage"] else "final"
    values = "  ".join(f"{k} {v:.4g}" for k, v in data.items() if isinstance(v, int | float))
    return f"[cyan]eval[/cyan] {where} · step {event['step']} · {data['data']}: {values}"


def summary_table(evaluation: dict[str, dict[str, float]]) -> Table:
    table = Table(title="final evaluation (validation split)", title_justify="left")
    table.add_column("data")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, metrics in evaluation.items():
        for metric, value in metrics.items():
            table.add_row(name, metric, f"{value:.4f}")
    return table
