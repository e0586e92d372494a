"""A training run's evaluation bookkeeping (docs/spec.md, `evaluation`): the history of every
evaluation reported, which checkpoints keep and the final model's evaluation.json holds, and
the newest measurement of each data name, so a step is measured once however often it is
reported (the measuring itself is models/training/evaluate.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Measure = Callable[[str, bool], dict[str, Any]]  # (data name, with task metrics) -> metrics


class EvalLog:
    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []  # {"stage", "step", metrics...}, oldest first
        self.last: dict[str, dict[str, Any]] = {}  # per data name: {"step", "tasks", "metrics"}

    def measured(self, step: int, name: str, with_tasks: bool, measure: Measure) -> dict[str, Any]:
        """The metrics of data `name` at `step`: measured now unless they already were (with
        the task metrics too when `with_tasks`)."""
        result = self.last.get(name)
        if result is None or result["step"] != step or (with_tasks and not result["tasks"]):
            result = {"step": step, "tasks": with_tasks, "metrics": measure(name, with_tasks)}
            self.last[name] = result
        metrics: dict[str, Any] = result["metrics"]
        return metrics

    def record(self, stage: str | None, step: int, metrics: dict[str, Any]) -> None:
        """Add a reported evaluation to the history (without its sample completions)."""
        self.history.append({"stage": stage, "step": step, **{k: v for k, v in metrics.items() if k != "samples"}})
