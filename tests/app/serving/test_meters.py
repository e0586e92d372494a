"""app/serving/meters.py: a generation's latency, time to first token and tokens, streamed or
not, and the model cache's loads and bytes, as /metrics shows them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import REGISTRY

from app.serving.engine import ModelCache
from models.inference.generate import Sampling


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_latency_first_token_tokens_and_the_cache_are_measured(model_dirs: list[Path]) -> None:
    names = ["stagecraft_inference_request_seconds_count", "stagecraft_inference_time_to_first_token_seconds_count",
             "stagecraft_inference_tokens_total", "stagecraft_inference_prompt_tokens_total",
             "stagecraft_inference_model_loads_total"]  # fmt: skip
    before = {n: value(n) for n in names}
    length = value("stagecraft_inference_requests_total", finish_reason="length")

    async def main() -> int:
        cache = ModelCache(1 << 30, 4, "cpu")
        served = await cache.get("a", model_dirs[0])
        for stream, n in ((True, 5), (False, 3), (False, 1)):  # one token: its first step is its last
            async for _ in cache.generate(served, [1, 2, 3], Sampling(max_new_tokens=n), [], False, stream, True):
                pass
        held = value("stagecraft_inference_model_cache_bytes")
        assert held >= cache.nbytes > 0
        return cache.nbytes

    asyncio.run(main())
    after = {n: value(n) - before[n] for n in names}
    assert after == {
        "stagecraft_inference_request_seconds_count": 3,
        "stagecraft_inference_time_to_first_token_seconds_count": 3,
        "stagecraft_inference_tokens_total": 5 + 3 + 1,
        "stagecraft_inference_prompt_tokens_total": 3 * 3,
        "stagecraft_inference_model_loads_total": 1,
    }
    assert value("stagecraft_inference_requests_total", finish_reason="length") == length + 3
    assert value("stagecraft_inference_time_to_first_token_seconds_sum") <= value(
        "stagecraft_inference_request_seconds_sum"
    )
