"""The dashboard's files: its own pages (plain JavaScript modules and CSS in `static/`, no
build step, shipped as package data) and the chart library, plotly.js, served from the
`plotly` Python package's own copy in site-packages (never a CDN, never a copy in this
repository). The routes are app/api/routes/dashboard.py; what the pages do is in
docs/api.md ("Dashboard")."""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
SHELL = STATIC / "index.html"  # the one HTML page, every dashboard path (filled in by the route)
MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@cache
def assets() -> dict[str, tuple[Path, str]]:
    """The files served under /dashboard/static/: name -> (path, media type). Only these:
    a request names one of them, never a path."""
    return {
        p.name: (p, MEDIA_TYPES[p.suffix]) for p in sorted(STATIC.iterdir()) if p.is_file() and p.suffix in MEDIA_TYPES
    }


@cache
def chart_library() -> Path | None:
    """plotly.js as the `plotly` package ships it (plotly/package_data/plotly.min.js), found
    without importing the package (its import pulls in pandas-like machinery we never use)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "package_data" / "plotly.min.js"
        if path.is_file():
            return path
    return None
