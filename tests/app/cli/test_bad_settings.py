"""A bad STAGECRAFT_ variable stops `stagecraft` with its name, its value and why, and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_a_bad_setting_is_named_without_a_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECRAFT_")}
    env |= {"STAGECRAFT_INFERENCE_COMPILE": "maybe", "STAGECRAFT_INFERENCE_QUANTIZATION": "int9"}
    argv = [sys.executable, "-m", "app.cli", "up", "--port", "1", "--data-dir", str(tmp_path)]
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 2, run.stderr
    assert "STAGECRAFT_INFERENCE_COMPILE='maybe': Input should be a valid boolean" in run.stderr
    assert "STAGECRAFT_INFERENCE_QUANTIZATION='int9'" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout
