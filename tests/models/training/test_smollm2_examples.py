"""The SmolLM2 example specs parse, and the LoRA one trains (steps shrunk) from a tiny GGUF
standing in for the real file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from models.data.streams import TextStream
from models.errors import SpecError, TrainingError
from models.families.llama.model import Llama
from models.formats.load import load_model
from models.spec import parse_spec
from models.training.pipeline import Pipeline
from tests.models.formats.gguf_files import tiny_model, train_tokenizer, write_gguf
from tests.models.training.test_pipeline import train

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.mark.parametrize("name", ["smollm2.yaml", "smollm2_lora.yaml", "smollm2_multistep.yaml"])
def test_the_smollm2_specs_parse(name: str) -> None:
    spec = parse_spec(yaml.safe_load((EXAMPLES / name).read_text()))
    assert spec.model.init_from is not None and spec.model.init_from.model.endswith(".gguf")
    if name == "smollm2_lora.yaml":
        adapter = spec.stages[0].adapter  # type: ignore[union-attr]
        assert adapter is not None and set(adapter.targets) == {"q", "k", "v", "o", "gate", "up", "down"}


def test_the_lora_spec_trains_from_a_stand_in_gguf(data_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    tok = train_tokenizer()
    gguf = tmp_path / "stand-in.gguf"
    write_gguf(gguf, tiny_model("llama", tok.get_vocab_size(), tied=True), tok)
    raw = yaml.safe_load((EXAMPLES / "smollm2_lora.yaml").read_text())
    raw["model"]["init_from"]["model"] = str(gguf)
    for ref in raw["data"].values():
        ref["dataset"] = str(data_dir / ("corpus.txt" if ref["dataset"].endswith(".txt") else "pairs.jsonl"))
    raw["stages"][0].update(steps=3, batch_size=2)
    raw["evaluation"].update(every_steps=3, max_samples=4)
    raw["checkpointing"]["every_steps"] = 3
    run = train(parse_spec(raw), tmp_path / "run")
    assert run.result is not None and run.result.steps == 3
    model, _ = load_model(tmp_path / "run" / "model")
    assert isinstance(model, Llama)


def test_the_multistep_spec_trains_from_a_stand_in_gguf(data_dir: Path, tmp_path: Path) -> None:
    """Both phases run (steps shrunk; the stand-in has 2 blocks, so the top one trains), and
    the held-out text, which no stage trains on, is measured at the end (its "before" is
    benchmarks/base_eval.py's); the text the phases train on has no validation split."""
    pytest.importorskip("transformers")
    tok = train_tokenizer()
    gguf = tmp_path / "stand-in.gguf"
    write_gguf(gguf, tiny_model("llama", tok.get_vocab_size(), tied=True), tok)
    raw = yaml.safe_load((EXAMPLES / "smollm2_multistep.yaml").read_text())
    raw["model"]["init_from"]["model"] = str(gguf)
    for ref in raw["data"].values():
        ref["dataset"] = str(data_dir / ("corpus.txt" if ref["dataset"].endswith(".txt") else "pairs.jsonl"))
    stage = raw["stages"][0]
    stage.update(cycles=2, batch_size=2)
    for phase in stage["phases"]:
        phase.update(steps=1, trainable=["blocks.1"])
    raw["evaluation"].update(every_steps=4, max_samples=2)
    raw["checkpointing"]["every_steps"] = 4
    run = train(parse_spec(raw), tmp_path / "run")
    assert run.result is not None and run.result.steps == 4
    phases = [e["data"]["phase"] for e in run.events if e["type"] == "train.step"]
    assert [p.split()[-1] for p in phases] == ["tasks", "text"] * 2
    measured = {e["data"]["data"] for e in run.events if e["type"] == "eval"}
    heldout = [e["step"] for e in run.events if e["type"] == "eval" and e["data"]["data"] == "heldout"]
    assert measured == {"pairs", "heldout"} and heldout == [4]
    assert "perplexity" in run.result.evaluation["heldout"]


def test_trainable_blocks_are_checked_against_the_base_model(data_dir: Path, tmp_path: Path) -> None:
    """With init_from, `blocks.N` names the base model's blocks (spec.model's default 4 layers
    are not the base's): top blocks of a 6-layer base train, the others stay as loaded, and a
    block the base lacks fails the run as a user error naming the field."""
    pytest.importorskip("transformers")
    tok = train_tokenizer()
    gguf = tmp_path / "six-layers.gguf"
    write_gguf(gguf, tiny_model("llama", tok.get_vocab_size(), tied=True, layers=6), tok)
    raw = yaml.safe_load((EXAMPLES / "smollm2.yaml").read_text())
    raw["model"]["init_from"]["model"] = str(gguf)
    for ref in raw["data"].values():
        ref["dataset"] = str(data_dir / ("corpus.txt" if ref["dataset"].endswith(".txt") else "pairs.jsonl"))
    raw["stages"][0].update(steps=2, batch_size=2, trainable=["blocks.4-5"])
    raw["evaluation"].update(every_steps=2, max_samples=0)
    raw["checkpointing"]["every_steps"] = 2
    run = train(parse_spec(raw), tmp_path / "run")
    assert run.result is not None and run.result.steps == 2
    base, _ = load_model(gguf)
    trained, _ = load_model(tmp_path / "run" / "model")
    before, after = base.state_dict(), trained.state_dict()
    layers = [n for n in before if n.startswith("model.layers.")]
    changed = {n.split(".")[2] for n in layers if not torch.equal(before[n], after[n])}
    assert changed == {"4", "5"}
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])

    raw["stages"][0]["trainable"] = ["blocks.6"]
    with pytest.raises(TrainingError) as failed:
        train(parse_spec(raw), tmp_path / "run-bad")
    assert failed.value.code == "user_error"
    assert "stages.0.trainable" in str(failed.value) and "blocks 0-5" in str(failed.value)


def test_train_block_size_sets_the_window_not_the_models_context(data_dir: Path, tmp_path: Path) -> None:
    """`model.train_block_size` with init_from: text is packed into (and measured on) blocks of
    that many tokens instead of the base's whole context (128 here), which the model keeps."""
    pytest.importorskip("transformers")
    tok = train_tokenizer()
    gguf = tmp_path / "stand-in.gguf"
    write_gguf(gguf, tiny_model("llama", tok.get_vocab_size(), tied=True), tok)
    raw = {
        "name": "window",
        "model": {"init_from": {"model": str(gguf)}, "train_block_size": 16},
        "data": {"corpus": {"dataset": str(data_dir / "corpus.txt"), "validation_fraction": 0.1}},
        "stages": [
            {
                "type": "pretrain",
                "name": "pre",
                "data": "corpus",
                "steps": 2,
                "batch_size": 2,
                "loss": {"type": "causal_lm"},
                "optimizer": {"type": "adamw", "lr": 1e-3},
                "trainable": ["blocks.1"],
            }
        ],
        "evaluation": {"every_steps": 2, "metrics": ["loss", "perplexity"], "max_samples": 0},
        "checkpointing": {"every_steps": 2},
        "precision": "fp32",
        "device": "cpu",
    }
    spec = parse_spec(raw)
    p = Pipeline(spec, tmp_path / "probe", None, None, Path)
    p.load_data()
    p.build_model()
    assert p.model.config.block_size == 128
    stream = p.streams[p.segments[0].key]
    assert isinstance(stream, TextStream) and stream.block == 16 and p.val_streams["corpus"].block == 16
    batch = stream.next_batch(2)
    assert tuple(batch.idx.shape) == (2, 16)
    run = train(spec, tmp_path / "run")
    assert run.result is not None and run.result.steps == 2
    model, _ = load_model(tmp_path / "run" / "model")
    assert model.config.block_size == 128
    with pytest.raises(SpecError) as bad:
        parse_spec({**raw, "model": {**raw["model"], "train_block_size": 4}})
    assert [e["loc"] for e in bad.value.errors] == ["model.train_block_size"]
