"""Validation loss, perplexity, and task metrics computed by generating from held-out prompts.

Task metrics by record task: translate → BLEU and chrF (sacrebleu), summarize → ROUGE-L
F1 (rouge-score), qa → exact match and token F1 (SQuAD normalisation). Scores are on a
0-100 scale for BLEU/chrF/ROUGE-L and 0-1 for exact match and F1.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sacrebleu
import torch
from rouge_score import rouge_scorer

from models.data.chat import ChatFormat
from models.data.preference_stream import PreferenceStream
from models.data.records import Example
from models.data.streams import Batch, Stream, TextStream
from models.data.tokenizer import Tokenizer
from models.families.build import Model
from models.inference.generate import Sampling, complete_tasks
from models.spec import CrossEntropyLoss, Evaluation
from models.training.losses import causal_lm, cross_entropy
from models.training.preference_eval import measure_pairs

EVAL_TOKENS = 16384  # validation loss is measured on about this many tokens
EVAL_BATCH = 16
PLAIN_CE = CrossEntropyLoss(type="cross_entropy")  # validation: no label smoothing
TASK_METRICS = {"translate": ("bleu", "chrf"), "summarize": ("rouge_l",), "qa": ("exact_match", "f1")}


@torch.no_grad()
def validation_loss(model: Model, batches: Iterable[Batch], loss_fn: Callable[[Batch], torch.Tensor]) -> float:
    """Token-weighted mean loss over the batches."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        n = int((batch.completion_targets != -100).sum())
        total += float(loss_fn(batch)) * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def _normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(_normalize(prediction) == _normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = _normalize(prediction).split(), _normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def score(task: str, predictions: list[str], references: list[str]) -> dict[str, float]:
    if task == "translate":
        return {
            "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
            "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
        }
    if task == "summarize":
        scorer = rouge_scorer.RougeScorer(["rougeL"])
        f = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]
        return {"rouge_l": 100.0 * sum(f) / len(f)}
    n = len(predictions)
    return {
        "exact_match": sum(exact_match(p, r) for p, r in zip(predictions, references)) / n,
        "f1": sum(token_f1(p, r) for p, r in zip(predictions, references)) / n,
    }


def task_metrics(
    model: Model,
    tok: Tokenizer,
    examples: list[Example],
    metrics: Sequence[str],
    max_samples: int,
    batch_size: int = 32,
    max_new_tokens: int = 48,
    chat: ChatFormat | None = None,
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """Greedy-generate completions for up to max_samples records per task and score them. On a
    chat model (`chat`), through its template, as training renders the records and the task
    endpoints serve them (models.inference.generate.complete_tasks).

    Returns ({"translate.chrf": ..., ...}, a few sample generations).
    """
    results: dict[str, float] = {}
    samples: list[dict[str, str]] = []
    for task, names in TASK_METRICS.items():
        wanted = [m for m in names if m in metrics]
        chosen = [e for e in examples if e.task == task][:max_samples]
        if not wanted or not chosen:
            continue
        predictions: list[str] = []
        for b in range(0, len(chosen), batch_size):
            part = chosen[b : b + batch_size]
            prompts = [e.prompt for e in part]
            predictions += complete_tasks(model, tok, prompts, Sampling(max_new_tokens), chat, truncate=True)
        references = [e.completion for e in chosen]
        for name, value in score(task, predictions, references).items():
            if name in wanted:
                results[f"{task}.{name}"] = round(value, 4)
        samples += [
            {"task": task, "prompt": e.prompt, "reference": e.completion, "prediction": p}
            for e, p in zip(chosen[:2], predictions[:2])
        ]
    return results, samples


def measure(
    model: Model,
    tok: Tokenizer,
    stream: Stream,
    examples: list[Example],
    spec: Evaluation,
    to_device: Callable[[Batch], Batch],
    chat: ChatFormat | None = None,
) -> dict[str, Any]:
    """The metrics `spec` asks for: validation loss and perplexity on `stream` (about
    EVAL_TOKENS tokens), and task metrics by generation for `examples` (if any); on preference
    data its preference metrics (models/training/preference_eval.py)."""
    if isinstance(stream, PreferenceStream):
        return measure_pairs(model, stream, spec, to_device, EVAL_BATCH, EVAL_TOKENS)
    loss_fn = causal_lm if isinstance(stream, TextStream) else cross_entropy
    batches = map(to_device, stream.eval_batches(EVAL_BATCH, EVAL_TOKENS))
    loss = validation_loss(model, batches, lambda b: loss_fn(model, b, PLAIN_CE))
    result: dict[str, Any] = {}
    if "loss" in spec.metrics:
        result["loss"] = round(loss, 5)
    if "perplexity" in spec.metrics:
        result["perplexity"] = round(perplexity(loss), 4)
    if examples and spec.max_samples:
        scores, samples = task_metrics(model, tok, examples, spec.metrics, spec.max_samples, chat=chat)
        result.update(scores)
        if samples:
            result["samples"] = samples
    return result
