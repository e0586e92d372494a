"""An empty generation is never printed as a bare empty line: stderr says why."""

from __future__ import annotations

import pytest

from app.cli.display import print_answer


def test_an_empty_answer_says_it_ended_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    print_answer("", "stop", 0)
    out, err = capsys.readouterr()
    assert out == "\n"
    assert "no text" in err and "finish reason stop, 0 new tokens" in err and "ended its answer at once" in err


def test_a_whitespace_answer_names_its_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    print_answer("  ", "length", 64)
    err = capsys.readouterr().err
    assert "only whitespace" in err and "finish reason length, 64 new tokens" in err


def test_a_real_answer_prints_alone(capsys: pytest.CaptureFixture[str]) -> None:
    print_answer("trois", "stop", 2)
    assert capsys.readouterr() == ("trois\n", "")
