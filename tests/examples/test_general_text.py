"""examples/make_general_text.py: prose paragraphs of standard-library docstrings, split by
module into the text the alternating SmolLM2 example trains on and held-out text it never sees."""

from __future__ import annotations

import subprocess
import sys
import zlib
from pathlib import Path

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "examples" / "make_general_text.py"
PROSE = "This paragraph explains in plain words what the function {} does for its callers today."


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, check=False
    )


def fake_stdlib(root: Path, modules: int) -> dict[str, str]:
    """Modules whose docstrings hold one prose paragraph each and things that are not prose."""
    wanted: dict[str, str] = {}
    for i in range(modules):
        text = PROSE.format(f"number_{i}")
        body = (
            f'"""{text}\n\n>>> example_{i}()\n42\n\nShort line.\n"""\n'
            f'def f():\n    """:param x: the value given to the function call in question here and now."""\n'
        )
        (root / f"mod{i}.py").write_text(body, encoding="utf-8")
        wanted[f"mod{i}.py"] = text
    (root / "test").mkdir()
    (root / "test" / "skipped.py").write_text(f'"""{PROSE.format("in_a_test")}"""\n', encoding="utf-8")
    (root / "broken.py").write_text("def (:\n", encoding="utf-8")
    return wanted


def test_paragraphs_are_split_by_module_and_filtered_to_prose(tmp_path: Path) -> None:
    stdlib = tmp_path / "lib"
    stdlib.mkdir()
    wanted = fake_stdlib(stdlib, 30)
    outs = tmp_path / "a", tmp_path / "b"
    for out in outs:
        done = run("--out", str(out), "--stdlib", str(stdlib))
        assert done.returncode == 0, done.stderr
    for name in ("general.txt", "general_heldout.txt"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()
    train = (outs[0] / "general.txt").read_text(encoding="utf-8").splitlines()
    heldout = (outs[0] / "general_heldout.txt").read_text(encoding="utf-8").splitlines()
    held_modules = {m for m in wanted if zlib.crc32(m.encode()) % 5 == 0}
    assert held_modules and len(held_modules) < len(wanted)
    assert sorted(heldout) == sorted(wanted[m] for m in held_modules)
    assert sorted(train) == sorted(wanted[m] for m in wanted if m not in held_modules)


def test_this_pythons_standard_library_gives_disjoint_text(tmp_path: Path) -> None:
    done = run("--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    train = (tmp_path / "general.txt").read_text(encoding="utf-8").splitlines()
    heldout = (tmp_path / "general_heldout.txt").read_text(encoding="utf-8").splitlines()
    assert len(train) > 1000 and len(heldout) > 200
    assert not set(train) & set(heldout)
    assert all(len(line.split()) >= 12 and ">>>" not in line for line in train + heldout)


def test_bad_options_name_themselves(tmp_path: Path) -> None:
    done = run("--out", str(tmp_path), "--max-paragraphs", "0")
    assert done.returncode == 2 and "--max-paragraphs" in done.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run("--out", str(tmp_path / "o"), "--stdlib", str(empty))
    assert done.returncode != 0 and "no prose docstrings" in done.stderr
