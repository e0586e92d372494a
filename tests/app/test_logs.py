"""app/logs.py: JSON lines that parse, with timestamp, level, logger, message and the context's
fields; readable lines on a terminal; request ids accepted or replaced; the context scoped."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import subprocess
import sys
import threading
from datetime import datetime

import pytest
import structlog

from app import logs
from tests.log_capture import captured, json_lines


def test_json_lines_parse_with_the_context_and_extra_fields() -> None:
    with captured("auto", worker="host:1:abc") as out:  # not a terminal: JSON
        with logs.scope(request_id="req-1", job_id="job_1", tenant="t_1"):
            logging.getLogger("stagecraft.test").info("job %s: %s", "job_1", "started", extra={"attempt": 2})
        logging.getLogger("stagecraft.test").warning("outside")
        try:
            raise ValueError("bad")
        except ValueError:
            logging.getLogger("stagecraft.test").exception("it failed")
        structlog.get_logger("stagecraft.native").info("native", step=3)
    first, outside, failed, native = json_lines(out.getvalue())
    assert list(first)[:4] == ["timestamp", "level", "logger", "message"]
    assert datetime.fromisoformat(first["timestamp"]).utcoffset() is not None
    assert first["level"] == "info" and first["logger"] == "stagecraft.test"
    assert first["message"] == "job job_1: started" and first["attempt"] == 2
    assert (first["request_id"], first["job_id"], first["tenant"], first["worker"]) == (
        "req-1",
        "job_1",
        "t_1",
        "host:1:abc",
    )
    assert outside["level"] == "warning" and "request_id" not in outside and outside["worker"] == "host:1:abc"
    assert failed["level"] == "error" and "ValueError: bad" in failed["exception"]
    assert native["message"] == "native" and native["step"] == 3 and native["logger"] == "stagecraft.native"


def test_a_terminal_gets_readable_lines_unless_json_is_asked_for() -> None:
    with captured("auto", tty=True) as out, logs.scope(request_id="req-2"):
        logging.getLogger("stagecraft.test").info("hello %s", "there")
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())  # colors off
    assert text.count("\n") == 1 and not text.startswith("{")
    assert "[info" in text and "hello there" in text and "request_id=req-2" in text and "stagecraft.test" in text
    with captured("json", tty=True) as out:
        logging.getLogger("stagecraft.test").info("forced")
    assert json_lines(out.getvalue())[0]["message"] == "forced"
    with captured("console") as out:
        logging.getLogger("stagecraft.test").info("readable")
    assert not out.getvalue().startswith("{") and "readable" in out.getvalue()


@pytest.mark.parametrize(
    "given", ["abc", "0f8fad5b-d9cb-469f-a165-70867728950e", "Root=1-5759e988;Parent=53995c", "x" * 128]
)
def test_a_printable_bounded_request_id_is_kept(given: str) -> None:
    assert logs.request_id(given) == given


@pytest.mark.parametrize("given", [None, "", "has space", "x" * 129, "tab\there", "new\nline", "caf\u00e9", "\x7f"])
def test_any_other_request_id_is_replaced(given: str | None) -> None:
    made = logs.request_id(given)
    assert re.fullmatch(r"[0-9a-f]{32}", made) and made != logs.request_id(given)


def test_scope_undoes_what_it_and_its_block_bound() -> None:
    logs.bind(tenant="outer")
    try:
        with logs.scope(job_id="job_1"):
            logs.bind(request_id="req-3", ignored=None)
            assert (logs.current("job_id"), logs.current("request_id"), logs.current("ignored")) == (
                "job_1",
                "req-3",
                None,
            )
            seen: list[object] = []
            in_context = contextvars.copy_context().run  # as the reporter's threads run (workers/reporter.py)
            thread = threading.Thread(target=in_context, args=(lambda: seen.append(logs.current("job_id")),))
            thread.start()
            thread.join()
            assert seen == ["job_1"]
        assert structlog.contextvars.get_contextvars() == {"tenant": "outer"}
    finally:
        structlog.contextvars.clear_contextvars()


def test_the_dict_config_of_uvicorns_worker_processes_writes_the_same_lines() -> None:
    code = (
        "import logging, logging.config; from app import logs; "
        "logging.config.dictConfig(logs.dict_config('auto')); "
        "logging.getLogger('uvicorn.error').info('Uvicorn running', extra={'color_message': 'x'})"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    line = json.loads(done.stderr)
    assert (line["logger"], line["message"], line["level"]) == ("uvicorn.error", "Uvicorn running", "info")
    assert "color_message" not in line
