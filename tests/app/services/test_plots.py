"""app.services.plots: stage spans from a spec, series from events (restarts included), the
PNG and SVG charts (decoded, and each series a line with as many points as it has), long
series thinned, and the terminal chart."""

from __future__ import annotations

import io
import math
import re
import xml.etree.ElementTree as ET
from typing import Any

from PIL import Image

from app.services import plots
from models.events import Event, make

SVG = "{http://www.w3.org/2000/svg}"
SPEC: dict[str, Any] = {
    "stages": [
        {"name": "pretrain", "steps": 30},
        {"name": "finetune", "steps": 6},
        {"name": "refine", "cycles": 2, "phases": [{"steps": 2}, {"steps": 3}]},
    ]
}


def stage(i: int) -> Any:
    return {"index": i, "name": ["pretrain", "finetune", "refine"][i]}


def run_events() -> list[Event]:
    """A three-stage run's events: a step each, evaluations at stage ends, task metrics at the end."""
    found: list[Event] = []
    for step in range(1, 47):
        i = 0 if step <= 30 else 1 if step <= 36 else 2
        if step in (1, 31, 37):
            found.append(make("stage.started", step - 1, {"type": "pretrain", "steps": 6}, stage(i)))
        loss = 5 * math.exp(-step / 15) + 1
        found.append(make("train.step", step, {"loss": loss, "lr": 1e-3, "phase": "x"}, stage(i)))
        if step in (30, 36, 46):
            found.append(make("eval", step, {"data": "corpus", "loss": 3.0 - step / 50, "perplexity": 9.0}, stage(i)))
    found.append(make("eval", 46, {"data": "pairs", "loss": 2.5, "qa.exact_match": 0.25, "samples": []}, None))
    return found


def series_groups(svg: bytes) -> dict[str, int]:
    """Series name -> the number of vertices of its line, from the SVG."""
    root = ET.fromstring(svg)
    found = {}
    for g in root.iter(SVG + "g"):
        gid = g.get("id") or ""
        if gid.startswith("series-"):
            path = g.find(SVG + "path")
            assert path is not None, gid
            found[gid.removeprefix("series-")] = len(re.findall(r"[ML]", path.get("d", "")))
    return found


def test_stage_spans_count_steps_across_the_job() -> None:
    spans = plots.stage_spans(SPEC)
    assert [(s.name, s.first, s.last) for s in spans] == [("pretrain", 1, 30), ("finetune", 31, 36), ("refine", 37, 46)]
    assert plots.stage_spans({"name": "no stages"}) == [] and plots.stage_spans({"stages": ["odd", {}]}) == []


def test_series_from_events_drop_what_a_restart_superseded() -> None:
    events = run_events()
    series = plots.series_from_events(events)
    assert [s for s, _ in series["train.loss"]] == list(range(1, 47))
    assert set(series) == {"train.loss", "train.lr", "eval.corpus.loss", "eval.corpus.perplexity", "eval.pairs.loss",
                           "eval.pairs.qa.exact_match"}  # fmt: skip
    rerun = [*events[:12], make("job.restarted", 0, {"from_step": 5}), make("train.step", 6, {"loss": 9.0}, stage(0))]
    again = plots.series_from_events(rerun)
    assert again["train.loss"][-2:] == [(5, series["train.loss"][4][1]), (6, 9.0)] and len(again["train.loss"]) == 6


def test_png_and_svg_hold_every_series() -> None:
    series = plots.series_from_events(run_events())
    spans = plots.stage_spans(SPEC)
    png = plots.render(series, spans, "png", "tiny $x$ (job_01)")  # a `$` in a name is text, not math
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size[0] >= 800 and image.size[1] >= 600
    svg = plots.render(series, spans, "svg", "tiny")
    drawn = series_groups(svg)
    # perplexity is left out (its scale would flatten the task metrics); every other series is one line
    assert drawn == {name: len(pts) for name, pts in series.items() if not name.endswith("perplexity")}
    text = svg.decode()
    assert all(name in text for name in ("pretrain", "finetune", "refine"))  # the stages are named


def test_empty_and_long_series() -> None:
    empty = plots.render({}, plots.stage_spans(SPEC), "svg")
    assert series_groups(empty) == {} and "no metrics yet" in empty.decode()
    long = {"train.loss": [(s, 1.0 / s) for s in range(1, 10_001)]}
    assert series_groups(plots.render(long, [], "svg")) == {"train.loss": plots.MAX_POINTS}
    thinned = plots.thin(long["train.loss"], 100)
    assert len(thinned) == 100 and thinned[0] == (50.5, sum(1.0 / s for s in range(1, 101)) / 100)


def test_terminal_chart_draws_the_loss_and_names_the_stages() -> None:
    series = plots.series_from_events(run_events())
    chart = plots.terminal_chart(series, plots.stage_spans(SPEC), width=60, height=8)
    lines = chart.splitlines()
    assert lines[0].startswith("train.loss: 46 points, steps 1-46")
    plot_rows = [line for line in lines if "┤" in line or "│" in line]
    assert len(plot_rows) == 8 and all(len(row.split("┤" if "┤" in row else "│")[1]) == 60 for row in plot_rows)
    assert any(0x2800 < ord(ch) <= 0x28FF for ch in "".join(plot_rows))  # braille dots
    axis = next(line for line in lines if "└" in line)
    assert axis.count("┴") == 2  # two stage boundaries
    assert re.search(r"pretrain\s+finet\w*\s+refine", chart)
    assert any(line.startswith("eval.corpus.loss") for line in lines)
    assert plots.terminal_chart({}, []) == "no metrics yet"
