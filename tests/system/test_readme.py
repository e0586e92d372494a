"""The README's commands, pasted in order into one shell, in a copy of the repository.

Every ```bash block runs, in order, as one `bash -eu -o pipefail` script (so variables an
earlier line sets reach later ones, and any failing command fails the test, naming its
block); ```python blocks run with `python -` at their place. A block is skipped only when
the line before it says `<!-- not run by tests/system/test_readme.py: REASON -->`.

The substitutions, all of them, to keep it minutes long and off shared ports:
  1. the copy's examples/multistep.yaml is shrunk (`shrink`: same stages, a tiny model,
     a few steps each), so `stagecraft train` and `jobs submit` take seconds;
  2. the port 8000 in the commands is replaced by a free port;
  3. HOME is a new empty folder (so `~/.stagecraft` is this test's own), and no
     STAGECRAFT_* variable is inherited.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.system.processes import base_env, free_port

SKIP = re.compile(r"<!-- not run by tests/system/test_readme.py: .+ -->")
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.S | re.M)


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every block the test runs, in order."""
    blocks = []
    for m in BLOCK.finditer(text):
        before = text[: m.start()].rstrip().splitlines()
        if before and SKIP.fullmatch(before[-1].strip()):
            continue
        blocks.append((m.group(1), m.group(2)))
    return blocks


def shrink(raw: dict[str, Any]) -> dict[str, Any]:
    """The example spec at a few seconds' size: its stages, phases, data and trainable parts
    unchanged (4 layers, as `blocks.2-3` needs)."""
    raw["model"] = {"arch": "gpt", "n_layer": 4, "n_head": 2, "n_embd": 32, "block_size": 64, "dropout": 0.0}
    raw["tokenizer"]["vocab_size"] = 512
    for stage in raw["stages"]:
        stage["batch_size"] = 4
        if stage["type"] == "multistep":
            stage["cycles"] = 1
            for phase in stage["phases"]:
                phase["steps"] = 2
        else:
            stage["steps"] = 6
            stage["schedule"]["warmup_steps"] = 1
    raw["evaluation"] = {"every_steps": 10, "metrics": ["loss", "chrf"], "max_samples": 2}
    raw["checkpointing"] = {"every_steps": 10, "keep_last": 1}
    raw["precision"] = "fp32"
    return raw


def repository_copy(dest: Path) -> None:
    """The tracked files of this checkout (what a clone has), without `../shared` beside it."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=False)
    names = [n for n in listed.stdout.decode().split("\0") if n] if listed.returncode == 0 else []
    if not names:  # not a git checkout: what the test needs
        names = ["README.md", *(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "examples").glob("*.*"))]
    for name in names:
        src = REPO_ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def script(blocks: list[tuple[str, str]], port: int) -> str:
    parts = ["set -euo pipefail"]
    for i, (language, code) in enumerate(blocks, 1):
        code = code.replace("8000", str(port))
        parts.append(f"echo '### README block {i} ({language})' >&2")
        parts.append(code if language == "bash" else f"python - <<'README_PY'\n{code}README_PY")
    parts.append("echo '### README done' >&2")
    return "\n".join(parts) + "\n"


def test_readme_blocks_are_found() -> None:
    blocks = readme_blocks((REPO_ROOT / "README.md").read_text(encoding="utf-8"))
    joined = "\n".join(code for _, code in blocks)
    assert "python examples/make_data.py" in joined and "stagecraft train examples/multistep.yaml" in joined
    assert "stagecraft up" in joined and "MODEL=$(" in joined
    assert "../shared" not in (REPO_ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_readme_commands_run_in_order(tmp_path: Path) -> None:
    repo, home = tmp_path / "clone", tmp_path / "home"
    repo.mkdir()
    home.mkdir()
    repository_copy(repo)
    example = repo / "examples" / "multistep.yaml"
    example.write_text(yaml.safe_dump(shrink(yaml.safe_load(example.read_text())), sort_keys=False))
    port = free_port()
    blocks = readme_blocks((repo / "README.md").read_text(encoding="utf-8"))
    (tmp_path / "readme.sh").write_text(script(blocks, port))
    env = base_env()
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    log = tmp_path / "readme.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", str(tmp_path / "readme.sh")], cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # the `stagecraft up &` it starts is stopped with its group
        )  # fmt: skip
        try:
            rc = proc.wait(timeout=900)
        finally:
            _stop_group(proc.pid)
    text = log.read_text(errors="replace")
    failed_at = re.findall(r"### README block \d+ \(\w+\)", text)
    assert rc == 0, f"failed in {failed_at[-1] if failed_at else 'setup'}:\n{text[-6000:]}"
    assert "### README done" in text
    assert (repo / "runs" / "example" / "model" / "config.json").is_file()
    assert (repo / "model.tar.gz").is_file()


def _stop_group(pgid: int) -> None:
    """SIGTERM to the script's process group (`stagecraft up` stops its worker), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        for _ in range(300):
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            subprocess.run(["sleep", "0.1"], check=False)
