"""The SDK stands alone: importing it loads nothing of the service (no `app`, `workers`,
`models`, no torch), and its own distribution (sdk/pyproject.toml) ships only `stagecraft/`."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SERVICE_MODULES = ("app", "workers", "models", "torch", "fastapi", "sqlalchemy", "celery")


def test_import_loads_nothing_of_the_service() -> None:
    probe = f"import json, sys, stagecraft; print(json.dumps([m for m in {SERVICE_MODULES!r} if m in sys.modules]))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_sdk_wheel_holds_only_the_stagecraft_package(tmp_path: Path) -> None:
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed in this environment (needed to build without isolation)")
    source = tmp_path / "sdk"
    # Following sdk/stagecraft (a link to ../stagecraft) copies the package itself.
    shutil.copytree(REPO_ROOT / "sdk", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    argv = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = tmp_path.glob("stagecraft_sdk-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith("dist-info/METADATA"))).decode()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"stagecraft"}, top
    assert "stagecraft/py.typed" in names and "stagecraft/_resources/jobs.py" in names
    requires = sorted(
        line.split(":", 1)[1].strip().split(">")[0]
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:")
    )
    assert requires == ["httpx", "pydantic", "tenacity"], requires
