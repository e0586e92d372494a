# %% [markdown]
# # Stagecraft from Python: a quickstart
#
# Run it against a local service, as a script or cell by cell in a notebook:
#
#     stagecraft up &                      # first start: writes an API key to ~/.stagecraft/api_key
#     python examples/sdk_quickstart.py
#
# The client finds the service by STAGECRAFT_URL (default http://127.0.0.1:8000) and the key by
# STAGECRAFT_API_KEY, then the key file `stagecraft up` wrote. It needs only `pip install ./sdk`.

# %%
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import stagecraft
from stagecraft.types import Event

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
if not (DATA / "corpus.txt").is_file() or not (DATA / "pairs.jsonl").is_file():
    subprocess.run([sys.executable, str(HERE / "make_data.py"), "--out", str(DATA)], check=True)

client = stagecraft.Client()
client.wait_until_ready(timeout=30)

# %% Upload the data: the service validates every line before it keeps a file.
corpus = client.datasets.upload(DATA / "corpus.txt")
pairs = client.datasets.upload(DATA / "pairs.jsonl")
print(f"{corpus.id}: {corpus.num_records} lines of text; {pairs.id}: {pairs.num_records} records")

# %% A job spec is a plain dict: the three stages of examples/multistep.yaml, made small
# enough to finish in well under a minute on a laptop CPU.
spec: dict[str, Any] = {
    "name": "sdk-quickstart",
    "model": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64},
    "tokenizer": {"vocab_size": 512, "train_on": ["corpus"]},
    "data": {
        "corpus": {"dataset": corpus.id, "validation_fraction": 0.05},
        "pairs": {"dataset": pairs.id, "validation_fraction": 0.1},
    },
    "stages": [
        {"type": "pretrain", "name": "pretrain", "data": "corpus", "steps": 60, "batch_size": 16,
         "loss": {"type": "causal_lm"}, "optimizer": {"type": "adamw", "lr": 1e-3},
         "schedule": {"type": "cosine", "warmup_steps": 6}},
        {"type": "finetune", "name": "finetune", "data": "pairs", "steps": 60, "batch_size": 16,
         "loss": {"type": "cross_entropy"}, "optimizer": {"type": "adam", "lr": 5e-4}},
        {"type": "multistep", "name": "refine", "cycles": 2, "batch_size": 16, "phases": [
            {"objective": "pretrain", "data": "corpus", "steps": 5, "loss": {"type": "causal_lm"},
             "optimizer": {"type": "sgd", "lr": 0.01, "momentum": 0.9}, "trainable": ["embeddings", "norms"]},
            {"objective": "finetune", "data": "pairs", "steps": 10, "loss": {"type": "cross_entropy"},
             "optimizer": {"type": "adamw", "lr": 2e-4}, "trainable": ["blocks.1", "head"]},
        ]},
    ],
    "evaluation": {"every_steps": 50, "metrics": ["loss", "chrf", "rouge_l", "exact_match"], "max_samples": 16},
    "checkpointing": {"every_steps": 50, "keep_last": 1},
}  # fmt: skip

# %% Validate first: a dry run that returns estimates, or raises with every error's field path.
try:
    client.jobs.validate({**spec, "seed": -1, "stages": [{**spec["stages"][0], "steps": 0}]})
except stagecraft.UnprocessableEntityError as exc:
    for problem in exc.details:
        print(f"  {problem['loc']}: {problem['message']}")
print("estimates:", client.jobs.validate(spec).estimates)

# %% Create the job and follow it to its end.
job = client.jobs.create(spec)


def show(event: Event) -> None:
    stage = event.stage.name if event.stage else "final"
    if event.type == "train.step" and event.step % 20 == 0:
        print(f"step {event.step:4d}  loss {event.data['loss']:.3f}")
    elif event.type == "eval":
        scores = {k: round(v, 3) for k, v in event.data.items() if isinstance(v, float)}
        print(f"eval ({stage}, step {event.step}) {event.data['data']}: {scores}")
    elif event.type in ("stage.started", "job.succeeded", "job.failed"):
        print(event.type, stage if event.type == "stage.started" else "")


job = client.jobs.wait(job.id, on_event=show)
print(job.status, job.model_id)
if job.status != "succeeded":
    raise SystemExit(f"the job ended {job.status}: {job.error}")

# %% What it learned: the final evaluation, and the loss curve.
report = client.jobs.evaluation(job.id)
for data_name, metrics in report.final.items():
    print(data_name, {k: round(v, 3) for k, v in metrics.items()})
loss = client.jobs.metrics(job.id).series["train.loss"]
print(f"train loss {loss[0][1]:.2f} at step {loss[0][0]} -> {loss[-1][1]:.2f} at step {loss[-1][0]}")

# %% Use the model.
model_id = str(job.model_id)
print(client.models.generate(model_id, "The number 42 is written", max_new_tokens=24).text)
print(client.models.translate(model_id, "forty-two").translation)
print(client.models.answer(model_id, "How many maps does Ana have?", "At the market, Ana has 3 maps.").answer)
print(client.models.summarize(model_id, "At the garden, Bo has 5 pens and Cy has 9 cups.").summary)
for piece in client.models.stream(model_id, "At the library,", max_new_tokens=16):
    print(piece, end="", flush=True)
print()

# %% Take it away: a Hugging Face archive (transformers' AutoModelForCausalLM loads it).
with tempfile.TemporaryDirectory() as tmp:
    archive = client.models.export(model_id, tmp)
    print("exported", archive.name, archive.stat().st_size, "bytes")

# %% Every list follows the cursor pages by itself.
for j in client.jobs.list(status="succeeded", limit=10):
    print(j.id, j.name, j.finished_at)
client.close()
