"""`stagecraft train` with `report_to: [tensorboard, mlflow]` on the tiny three-stage spec:
DIR/metrics.png at the end, TensorBoard event files in DIR/tensorboard and an MLflow file
store in DIR/mlruns, whose own readers give back the loss of every step as events.jsonl has it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.app.cli.test_cli import ENV, read_events, stagecraft
from tests.app.cli.test_train_checks import good_data, spec_file


def test_train_writes_metrics_png_and_reports_to_tensorboard_and_mlflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    good_data(tmp_path)
    spec = spec_file(tmp_path, report_to=["tensorboard", "mlflow"])
    out = tmp_path / "run"
    env = {k: v for k, v in ENV.items() if not k.startswith(("STAGECRAFT_", "MLFLOW_"))}
    proc = subprocess.run(
        [*stagecraft(), "train", str(spec), "--out", str(out)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "report_to" not in proc.stderr  # no sink was disabled

    with Image.open(out / "metrics.png") as image:
        assert image.format == "PNG" and image.size[0] >= 800
    steps = [e for e in read_events(out) if e["type"] == "train.step"]
    losses = [(e["step"], e["data"]["loss"]) for e in steps]
    assert [s for s, _ in losses] == list(range(1, 23))

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    stages = {e["stage"]["name"] for e in steps}
    assert {f"{name}/train/loss" for name in stages} <= set(acc.Tags()["scalars"])
    board = sorted((s.step, s.value) for name in stages for s in acc.Scalars(f"{name}/train/loss"))
    assert [s for s, _ in board] == [s for s, _ in losses]
    assert [v for _, v in board] == pytest.approx([v for _, v in losses], rel=1e-6)  # stored as float32

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # (the run set it for itself)
    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("stagecraft")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train.loss"))
    assert history == losses
