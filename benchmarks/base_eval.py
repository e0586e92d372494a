"""Evaluate a spec's starting model the way its run evaluates the finished one: the "before"
figures of a fine-tune.

Builds the run's pipeline for SPEC (data split, base model from `init_from`, precision,
chat format), then measures the model as loaded, before any step, on every data with a
validation split: validation loss and perplexity, and the task metrics by greedy generation
(`evaluation.metrics`, `evaluation.max_samples` held-out records per task) — the same code
as the run's final evaluation (models.training.pipeline.Pipeline.measure). Prints one JSON object.

    python benchmarks/base_eval.py examples/smollm2.yaml
    python benchmarks/base_eval.py examples/smollm2_multistep.yaml --max-samples 32
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.spec import parse_spec  # noqa: E402
from models.training.pipeline import Pipeline  # noqa: E402


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", type=Path)
    ap.add_argument("--max-samples", type=int, help="held-out records per task (default: the spec's)")
    ap.add_argument("--metrics", help="comma-separated, e.g. loss,perplexity,chrf (default: the spec's)")
    args = ap.parse_args()
    raw: dict[str, Any] = yaml.safe_load(args.spec.read_text())
    evaluation = raw.setdefault("evaluation", {})
    if args.max_samples is not None:
        evaluation["max_samples"] = args.max_samples
    if args.metrics:
        evaluation["metrics"] = args.metrics.split(",")
    spec = parse_spec(raw)
    base = args.spec.resolve().parent
    started, cpu0 = time.monotonic(), cpu_seconds()
    with tempfile.TemporaryDirectory() as work:
        p = Pipeline(spec, Path(work), None, None, lambda ref: base / ref)
        p.load_data()
        p.build_model()
        p.adapters.apply(p.model, 0)
        loaded = time.monotonic()
        result = {name: p.measure(name, with_tasks=True) for name in p.val_streams}
    report = {
        "spec": str(args.spec),
        "evaluation": spec.evaluation.model_dump(mode="json"),
        "before": result,
        "load_s": round(loaded - started, 1),
        "measure_s": round(time.monotonic() - loaded, 1),
        "cpu_s": round(cpu_seconds() - cpu0, 1),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
