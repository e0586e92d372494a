"""Charts of a job's metric series, one module for every caller: the routes
`GET /v1/jobs/{id}/metrics.png|.svg`, `stagecraft jobs plot` (a braille chart in the terminal)
and `stagecraft train` (DIR/metrics.png at the end of a run).

Series are what app.services.metrics stores (`train.loss`, `train.lr`, `eval.<data>.<metric>`,
each [(step, value), ...] in step order); stages are read off a spec as a dict (the stored
spec, the SDK's `job.spec`, or `JobSpec.model_dump()`): step numbers count across the job, so
stage i covers steps `first`..`last`. Figures are drawn with matplotlib's object API on an Agg
canvas (no pyplot, no global figure state), one at a time per process.
"""

from __future__ import annotations

import io
import json
import threading
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from models.events import Event

Series = dict[str, list[tuple[int, float]]]
Format = Literal["png", "svg"]
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "svg": "image/svg+xml"}
MAX_POINTS = 2000  # a longer series is drawn as this many bucket means
EVAL_LOSSES = ("loss",)  # eval metrics drawn with the training loss
NOT_DRAWN = ("perplexity",)  # exp(loss): its scale would flatten the task metrics
_RENDER = threading.Lock()


@dataclass(frozen=True)
class StageSpan:
    index: int
    name: str
    first: int  # its first step (global)
    last: int  # its last step


def stage_spans(spec: Mapping[str, Any]) -> list[StageSpan]:
    """The stages of a spec dict, with their global step ranges (a multistep stage: cycles x
    its phases' steps). Anything malformed is left out rather than raised."""
    spans: list[StageSpan] = []
    start = 0
    stages = spec.get("stages") if isinstance(spec, Mapping) else None
    for i, stage in enumerate(stages if isinstance(stages, list) else []):
        if not isinstance(stage, Mapping):
            continue
        steps = stage.get("steps")
        if not isinstance(steps, int):
            phases = [p for p in stage.get("phases") or [] if isinstance(p, Mapping)]
            cycles = stage.get("cycles")
            steps = (cycles if isinstance(cycles, int) else 1) * sum(
                p["steps"] for p in phases if isinstance(p.get("steps"), int)
            )
        if steps > 0:
            spans.append(StageSpan(i, str(stage.get("name", f"stage {i}")), start + 1, start + steps))
            start += steps
    return spans


def series_from_events(events: Iterable[Event]) -> Series:
    """The series a worker would store for these events (app.services.metrics.record): a
    restart from a checkpoint drops the points past it, a step measured again is replaced."""
    from app.services.metrics import points

    found: dict[str, dict[int, float]] = {}
    for e in events:
        if e.get("type") == "job.restarted":
            since = e["data"].get("from_step", 0)
            found = {k: {s: v for s, v in pts.items() if s <= since} for k, pts in found.items()}
        for name, value in points(e):
            found.setdefault(name, {})[e["step"]] = value
    return {k: sorted(pts.items()) for k, pts in sorted(found.items()) if pts}


def read_events(path: Path) -> list[Event]:
    """The events of a `stagecraft train` run (DIR/events.jsonl); a torn last line is skipped."""
    found: list[Event] = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def thin(points: list[tuple[int, float]], most: int = MAX_POINTS) -> list[tuple[float, float]]:
    """At most `most` points: consecutive buckets replaced by their mean step and value."""
    if len(points) <= most:
        return [(float(s), v) for s, v in points]
    size = -(-len(points) // most)
    buckets = (points[i : i + size] for i in range(0, len(points), size))
    return [(sum(s for s, _ in b) / len(b), sum(v for _, v in b) / len(b)) for b in buckets]


def panels(series: Series) -> list[tuple[str, list[str]]]:
    """(y label, series names) per panel: the losses (training and evaluation), the learning
    rate, the task metrics; a panel with nothing to draw is left out."""
    evals = [n for n in series if n.startswith("eval.")]
    losses = [n for n in ("train.loss",) if n in series] + [n for n in evals if n.rpartition(".")[2] in EVAL_LOSSES]
    tasks = [n for n in evals if n.rpartition(".")[2] not in (*EVAL_LOSSES, *NOT_DRAWN)]
    found = [("loss", losses), ("learning rate", [n for n in ("train.lr",) if n in series]), ("metric", tasks)]
    return [(label, names) for label, names in found if names]


def render(series: Series, spans: list[StageSpan], fmt: Format, title: str = "") -> bytes:
    """A PNG or SVG of the panels, stages shaded in turn, their boundaries dashed and their
    names on top. Each series is one line whose SVG group has the id `series-<name>`."""
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    drawn = panels(series)
    exact = rc_context({"path.simplify": False, "svg.fonttype": "none", "svg.hashsalt": "stagecraft", "font.size": 9})
    with _RENDER, warnings.catch_warnings(), exact:
        warnings.simplefilter("ignore")  # a glyph missing from the font of a job's name, ...
        fig = Figure(figsize=(9.0, 0.9 + 2.4 * max(1, len(drawn))), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        axes = list(fig.subplots(max(1, len(drawn)), 1, sharex=True, squeeze=False)[:, 0])
        for ax, (label, names) in zip(axes, drawn):
            for name in names:
                xs, ys = zip(*thin(series[name]))
                small = name.startswith("eval.") or len(xs) < 2
                (line,) = ax.plot(xs, ys, label=name, linewidth=1.2, marker="o" if small else None, markersize=3)
                line.set_gid(f"series-{name}")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small", loc="best")
        if not drawn:
            axes[0].text(0.5, 0.5, "no metrics yet", ha="center", va="center", transform=axes[0].transAxes)
        for ax in axes:
            _mark_stages(ax, spans, names_on_top=ax is axes[0])
        axes[-1].set_xlabel("step")
        if title:
            fig.suptitle(title, parse_math=False)
        buf = io.BytesIO()
        meta = {"Software": "stagecraft"} if fmt == "png" else {"Date": None, "Creator": "stagecraft"}
        fig.savefig(buf, format=fmt, metadata=meta)
    return buf.getvalue()


def _mark_stages(ax: Any, spans: list[StageSpan], names_on_top: bool) -> None:
    for span in spans:
        lo, hi = span.first - 0.5, span.last + 0.5
        if span.index % 2:
            ax.axvspan(lo, hi, color="0.93", zorder=0, linewidth=0)
        if span.index:
            ax.axvline(lo, color="0.5", linestyle="--", linewidth=0.8, zorder=1)
        if names_on_top:
            ax.text((lo + hi) / 2, 1.01, span.name, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize="small", color="0.3", parse_math=False, clip_on=False)  # fmt: skip


def write_run_plot(out: Path, spec: Mapping[str, Any], title: str = "", events: list[Event] | None = None) -> Path:
    """`stagecraft train`: DIR/metrics.png from the run's events (DIR/events.jsonl: every
    invocation's, resumes included, unless given)."""
    path = out / "metrics.png"
    found = read_events(out / "events.jsonl") if events is None else events
    image = render(series_from_events(found), stage_spans(spec), "png", title)
    partial = path.with_name(".metrics.png.partial")
    partial.write_bytes(image)
    partial.replace(path)
    return path


# --- the terminal ----------------------------------------------------------------------------

BRAILLE = 0x2800
DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # [row][column] of a 2x4 cell
SPARKS = "▁▂▃▄▅▆▇█"


def terminal_chart(series: Series, spans: list[StageSpan], width: int = 64, height: int = 10) -> str:
    """The training loss (else the first evaluation loss) as a braille line chart, stage
    boundaries marked on the step axis and named beneath it; then a sparkline for the learning
    rate and each evaluation loss. Plain text, no colour."""
    losses = next((names for label, names in panels(series) if label == "loss"), [])
    if not losses:
        return "no metrics yet"
    name, pts = losses[0], thin(series[losses[0]], 2 * width)
    x_lo = min(pts[0][0], spans[0].first if spans else pts[0][0])
    x_hi = max(pts[-1][0], spans[-1].last if spans else pts[-1][0])
    y_lo, y_hi = min(v for _, v in pts), max(v for _, v in pts)
    if y_hi - y_lo < 1e-12:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    cols, rows = 2 * width, 4 * height

    def dot(x: float, y: float) -> tuple[int, int]:
        c = round((x - x_lo) / max(x_hi - x_lo, 1e-12) * (cols - 1))
        return c, round((y_hi - y) / (y_hi - y_lo) * (rows - 1))

    cells = [[0] * width for _ in range(height)]
    last: tuple[int, int] | None = None
    for x, y in pts:
        here = dot(x, y)
        start = last or here
        n = max(abs(here[0] - start[0]), abs(here[1] - start[1]), 1)
        for k in range(n + 1):
            c = start[0] + round((here[0] - start[0]) * k / n)
            r = start[1] + round((here[1] - start[1]) * k / n)
            cells[r // 4][c // 2] |= DOTS[r % 4][c % 2]
        last = here
    top, bottom = f"{y_hi:.4g}", f"{y_lo:.4g}"
    pad = max(len(top), len(bottom))
    lines = [f"{name}: {len(series[name])} points, steps {series[name][0][0]}-{series[name][-1][0]}, "
             f"last {series[name][-1][1]:.4g}"]  # fmt: skip
    for i, row in enumerate(cells):
        label = top if i == 0 else bottom if i == height - 1 else ""
        lines.append(f"{label:>{pad}} {'┤' if label else '│'}" + "".join(chr(BRAILLE + b) for b in row))
    axis, names = ["─"] * width, [" "] * width
    starts = [min(dot(span.first, y_lo)[0] // 2, width - 1) for span in spans]
    for i, (span, c) in enumerate(zip(spans, starts)):
        if span.index:
            axis[c] = "┴"
        room = (starts[i + 1] if i + 1 < len(starts) else width) - c - 1
        label = span.name[: max(1, room)]
        names[c : c + len(label)] = list(label)
    lines.append(" " * pad + " └" + "".join(axis))
    if spans:
        lines.append(" " * (pad + 2) + "".join(names[:width]).rstrip())
    lines.append(" " * (pad + 2) + f"step {x_lo:g}" + f"step {x_hi:g}".rjust(max(0, width - len(f"step {x_lo:g}"))))
    extra = [n for n in ("train.lr", *losses[1:]) if n in series and n != name]
    label_width = max((len(n) for n in extra), default=0)
    for other in extra:
        spark = sparkline([v for _, v in thin(series[other], width)])
        lines.append(f"{other:<{label_width}} {spark} {series[other][-1][1]:.4g}")
    return "\n".join(lines)


def sparkline(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    return "".join(SPARKS[min(len(SPARKS) - 1, int((v - lo) / span * len(SPARKS)))] for v in values)
