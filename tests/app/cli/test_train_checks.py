"""`stagecraft train`'s checks before it runs and its display: every spec error (field and
cross-field together), every bad data line of every file on its own line, a refused --out
that leaves the existing run untouched, `keys` on an unmigrated database, and the bars."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from app.cli.display import RunDisplay
from models.spec import parse_spec
from tests.app.cli.test_cli import cli
from tests.conftest import BASE_SPEC, corpus_texts, record_objects, write_jsonl


def spec_file(root: Path, corpus: str = "corpus.txt", pairs: str = "pairs.jsonl", **changes: Any) -> Path:
    raw = json.loads(json.dumps(BASE_SPEC))
    raw["data"]["corpus"]["dataset"], raw["data"]["pairs"]["dataset"] = corpus, pairs
    raw.update(changes)
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def good_data(root: Path) -> None:
    (root / "corpus.txt").write_text("\n".join(corpus_texts(50)) + "\n", encoding="utf-8")
    write_jsonl(root / "pairs.jsonl", record_objects(20))


def test_field_and_cross_field_errors_are_reported_together(tmp_path: Path) -> None:
    good_data(tmp_path)
    path = spec_file(tmp_path, seed=-3)
    raw = yaml.safe_load(path.read_text())
    raw["stages"][1]["data"] = "elsewhere"
    raw["tokenizer"]["train_on"] = ["corpus", "nothing"]
    path.write_text(yaml.safe_dump(raw))
    proc = cli("train", path, "--out", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert any(x.strip().startswith("seed:") for x in lines)
    assert any("stages.1.data: unknown data name 'elsewhere'" in x for x in lines)
    assert any("tokenizer.train_on.1: unknown data name 'nothing'" in x for x in lines)
    assert not (tmp_path / "out").exists()


def test_every_bad_line_of_every_file_on_its_own_line(tmp_path: Path) -> None:
    (tmp_path / "corpus.txt").write_bytes(b"good\n\xff bad\ngood\n\xfe\n")
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "p"}\n{"prompt": "p", "completion": "c"}\n{oops\n')
    proc = cli("train", spec_file(tmp_path), "--out", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    for wanted in ("corpus.txt line 2: (line): not UTF-8", "corpus.txt line 4:", "pairs.jsonl line 1: completion"):
        assert sum(wanted in x for x in lines) == 1, (wanted, proc.stderr)
    assert sum("pairs.jsonl line 3: (line): invalid JSON" in x for x in lines) == 1
    assert not (tmp_path / "out").exists(), "nothing is written for bad data"


def test_a_refused_out_is_left_untouched(tmp_path: Path) -> None:
    good_data(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    (out / "spec.json").write_text('{"name": "an earlier run"}')
    (out / "events.jsonl").write_text('{"seq": 1, "type": "job.started"}\n')
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = cli("train", spec_file(tmp_path), "--out", out)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr and "--resume" in proc.stderr
    proc = cli("train", spec_file(tmp_path), "--out", out, "--resume")
    assert proc.returncode == 2 and "different spec" in proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_keys_on_an_unmigrated_database_say_to_migrate(tmp_path: Path) -> None:
    for args in (("keys", "list"), ("keys", "create", "--tenant", "t"), ("keys", "revoke", "key_x")):
        proc = cli(*args, "--data-dir", tmp_path / "fresh")
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "run `stagecraft migrate`" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def _events(spec_steps: list[int], resume_at: int = 0) -> list[dict[str, Any]]:
    """The events of a run of stages with these step counts (the pipeline's numbering)."""
    made: list[dict[str, Any]] = [{"type": "job.started", "stage": None, "step": 0, "data": {}}]
    if resume_at:
        made.append({"type": "job.restarted", "stage": None, "step": resume_at, "data": {"from_step": resume_at}})
    step = 0
    for i, n in enumerate(spec_steps):
        stage = {"index": i, "name": f"s{i}"}
        if step >= resume_at:
            made.append({"type": "stage.started", "stage": stage, "step": step, "data": {}})
        for _ in range(n):
            step += 1
            if step > resume_at:
                data = {"loss": 2.0, "lr": 1e-3, "tokens_per_s": 1000.0 if step % 2 else 3000.0}
                made.append({"type": "train.step", "stage": stage, "step": step, "data": data})
        made.append({"type": "checkpoint.saved", "stage": stage, "step": step, "data": {"path": f"ckpt-{step}"}})
    return made


def _rendered(resume_at: int) -> tuple[str, RunDisplay]:
    raw = json.loads(json.dumps(BASE_SPEC))
    spec = parse_spec(raw)
    steps = [s.steps for s in spec.stages]
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, force_terminal=False, color_system=None)
    with RunDisplay(spec, console) as display:
        for event in _events(steps, resume_at):
            display(event)
    return buffer.getvalue(), display


def test_display_numbers_bars_by_the_job_step() -> None:
    text, display = _rendered(0)
    spec = parse_spec(json.loads(json.dumps(BASE_SPEC)))
    total, first = spec.total_steps, spec.stages[0].steps
    assert f"step {total}/{total}" in text
    assert f"step {first} of 1–{first}" in text
    assert f"step {first + spec.stages[1].steps} of {first + 1}–{first + spec.stages[1].steps}" in text
    assert f"checkpoint at step {first}: ckpt-{first}" in text
    assert display.preparing is None, "the spinner is gone once training starts"
    # tokens/s alternates 1000/3000: the average shown lies between, not the last value
    shown = float(text.split(" tok/s")[0].rsplit(" ", 1)[1].replace(",", ""))
    assert 1000 < shown < 3000


def test_display_after_a_resume_counts_from_the_checkpoint() -> None:
    text, display = _rendered(5)
    assert display.resumed_from == 5 and "resuming from step 5" in text
    total = parse_spec(json.loads(json.dumps(BASE_SPEC))).total_steps
    assert f"step {total}/{total}" in text
