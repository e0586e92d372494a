"""app.serving.requests: a request that the decoder fails answers 500 `internal_error` (our
failure, not the caller's), stop strings are checked, and task prompts are the training ones."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.errors import InternalError, Invalid
from app.serving.engine import ModelCache
from app.serving.requests import Prepared, stop_list
from models.data.records import qa_prompt, summarize_prompt, task_prompt, translate_prompt
from models.inference.decoder import Decoder
from models.inference.generate import Sampling


def test_a_failed_generation_is_an_internal_error(model_dirs: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Decoder) -> list[object]:
        raise RuntimeError("the device went away")

    async def run() -> None:
        cache = ModelCache(1 << 30, 4, "cpu")
        served = await cache.get("m0", model_dirs[0])
        monkeypatch.setattr(Decoder, "step", broken)
        p = Prepared(cache, served, served.tok.encode("At the market,"), Sampling(max_new_tokens=4), [], False)
        with pytest.raises(InternalError) as failed:
            await p.text()
        assert (failed.value.status, failed.value.code) == (500, "internal_error")

    asyncio.run(run())


def test_stop_strings() -> None:
    assert stop_list(None, "body.stop") == [] and stop_list(".", "body.stop") == ["."]
    for bad in (["a", "b", "c", "d", "e"], ["ok", ""]):
        with pytest.raises(Invalid) as refused:
            stop_list(bad, "body.stop")
        assert refused.value.details[0]["loc"] == "body.stop"


def test_task_prompts_are_the_training_templates() -> None:
    assert task_prompt("translate", {"text": "two", "source_lang": "en", "target_lang": "fr"}) == translate_prompt(
        "two", "en", "fr"
    )
    assert task_prompt("qa", {"question": "Who?", "context": "Ana."}) == qa_prompt("Who?", "Ana.")
    assert task_prompt("summarize", {"text": "Bo has 5 pens."}) == summarize_prompt("Bo has 5 pens.")
    with pytest.raises(ValueError, match="unknown task"):
        task_prompt("poetry", {})
