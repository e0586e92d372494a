"""GET /v1/jobs/{id}/metrics.png and .svg (SQLite and PostgreSQL): the stored series drawn
per stage, another tenant's job a 404 like a missing one; and `stagecraft jobs plot` against
the service under uvicorn: a PNG or SVG by suffix, a chart in the terminal without --out."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi import FastAPI
from PIL import Image
from typer.testing import CliRunner

from app.api.main import create_app
from app.cli import cli
from app.config import Settings
from app.db import Database
from app.services import lifecycle, metrics
from tests.app.api.conftest import Client, error
from tests.app.services.test_plots import SPEC, run_events, series_groups

Tenant = Callable[[], tuple[dict[str, str], str]]


def job_with_metrics(database: Database, settings: Settings, tenant_id: str) -> str:
    """A job of SPEC's three stages whose worker reported run_events()."""
    spec = {"name": "charted", **SPEC}
    with database.write() as session:
        job, _ = lifecycle.create(session, tenant_id, "charted", spec, {}, 46, None)
        metrics.record(session, settings, job.id, run_events(), {})
        session.commit()
        return job.id


def test_charts_draw_the_stored_series(client: Client, database: Database, settings: Settings) -> None:
    job_id = job_with_metrics(database, settings, client.tenant_id)
    with database.read() as session:
        stored = metrics.series(session, job_id)
    png = client.get(f"/v1/jobs/{job_id}/metrics.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.headers["cache-control"] == "no-store"
    with Image.open(io.BytesIO(png.content)) as image:
        assert image.format == "PNG" and image.size[0] >= 800
    svg = client.get(f"/v1/jobs/{job_id}/metrics.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert series_groups(svg.content) == {k: len(v) for k, v in stored.items() if not k.endswith("perplexity")}
    assert f"charted ({job_id})" in svg.text


def test_another_tenants_job_is_a_404_like_a_missing_one(
    client: Client, database: Database, settings: Settings, new_tenant: Tenant
) -> None:
    job_id = job_with_metrics(database, settings, client.tenant_id)
    other, _ = new_tenant()
    missing = "job_" + "0" * 26
    for suffix in ("png", "svg"):
        theirs = error(client.get(f"/v1/jobs/{job_id}/metrics.{suffix}", headers=other), 404, "not_found")
        nothing = error(client.get(f"/v1/jobs/{missing}/metrics.{suffix}"), 404, "not_found")
        assert theirs == {**nothing, "message": nothing["message"].replace(missing, job_id)}


def test_jobs_plot_writes_png_or_svg_and_draws_in_the_terminal(
    database: Database,
    settings: Settings,
    new_tenant: Tenant,
    serve: Callable[[FastAPI], str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    headers, tenant_id = new_tenant()
    job_id = job_with_metrics(database, settings, tenant_id)
    monkeypatch.setenv("STAGECRAFT_URL", serve(create_app(settings)))
    monkeypatch.setenv("STAGECRAFT_API_KEY", headers["Authorization"].removeprefix("Bearer "))
    runner = CliRunner()
    for name in ("chart.png", "chart.SVG"):
        done = runner.invoke(cli, ["jobs", "plot", job_id, "--out", str(tmp_path / name)])
        assert done.exit_code == 0, done.output
        assert done.stdout.strip() == str(tmp_path / name)
    with Image.open(tmp_path / "chart.png") as image:
        assert image.format == "PNG"
    assert set(series_groups((tmp_path / "chart.SVG").read_bytes())) >= {"train.loss", "eval.corpus.loss"}
    shown = runner.invoke(cli, ["jobs", "plot", job_id], env={"COLUMNS": "120"})
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.startswith("train.loss: 46 points") and "pretrain" in shown.stdout and "┴" in shown.stdout
    both = runner.invoke(cli, ["jobs", "plot", job_id, "--out", str(tmp_path / "again.png"), "--terminal"])
    assert both.exit_code == 0 and (tmp_path / "again.png").is_file() and "train.loss: 46 points" in both.stdout
    wrong = runner.invoke(cli, ["jobs", "plot", job_id, "--out", str(tmp_path / "chart.pdf")])
    assert wrong.exit_code == 2 and ".png or .svg" in wrong.output and not (tmp_path / "chart.pdf").exists()
    missing = runner.invoke(cli, ["jobs", "plot", "job_" + "0" * 26])
    assert missing.exit_code == 1 and "404 not_found" in missing.output
