"""app.serving.engine.ModelCache: one load per model however many ask at once, one thread for all
torch work, an LRU cache bounded by bytes, generation that never stalls the event loop;
ServingGPT computes GPT's logits (oneDNN-packed and plain projections alike)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
import torch

import app.serving.engine
from app.serving.engine import ModelCache, Served
from models.data.tokenizer import Tokenizer
from models.families.gpt.serving import ServingGPT
from models.formats.load import load_model
from models.inference.generate import Sampling, generate_ids
from models.layers.kv_cache import KVCache
from models.layers.projection import LAYOUTS


@pytest.mark.parametrize("layout", LAYOUTS)
def test_serving_gpt_computes_the_gpt_logits(model_dirs: list[Path], layout: str) -> None:
    if layout == "packed" and not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    model, _ = load_model(model_dirs[0])
    net = ServingGPT(model, layout=layout)  # plain: the addmm layout, as on a build without oneDNN
    for p in (net.layers[0].fc, net.head):
        assert [p.packed is not None, p.weight_t is not None, p.weight is not None] == [k == layout for k in LAYOUTS]
    idx = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    cache = KVCache(model.config, 2, torch.device("cpu"), torch.float32)
    first = net.last_logits(idx[:, :8], torch.arange(8)[None], cache, None)
    rest = [net.last_logits(idx[:, t : t + 1], torch.tensor([[t]]), cache, None) for t in range(8, 12)]
    with torch.no_grad():
        full = model(idx)
    torch.testing.assert_close(first, full[:, 7], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rest[-1], full[:, 11], rtol=1e-4, atol=1e-5)


async def collect(engine: ModelCache, served: Served, prompt: list[int], n: int) -> str:
    """Generate n tokens (whatever they are) and return the text."""
    text, tokens = "", 0
    async for u in engine.generate(served, prompt, Sampling(max_new_tokens=n), [], False, False, ignore_eos=True):
        text, tokens = text + u.text, u.tokens
    assert tokens == n
    return text


def test_concurrent_first_requests_share_one_load(model_dirs: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    real = app.serving.engine._load

    def counting(cache: ModelCache, key: str, directory: Path, precision: str) -> Served:
        calls.append(directory)
        time.sleep(0.2)  # a slow load: the other requests arrive meanwhile
        return real(cache, key, directory, precision)

    monkeypatch.setattr(app.serving.engine, "_load", counting)

    async def main() -> list[Served]:
        engine = ModelCache(1 << 30, 4, "cpu")
        return await asyncio.gather(*(engine.get("a", model_dirs[0]) for _ in range(5)))

    served = asyncio.run(main())
    assert len(calls) == 1 and all(s is served[0] for s in served)


def test_one_thread_runs_every_load_and_decode_step(model_dirs: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two models, loaded and decoding at once, run torch on a single thread (a second torch
    thread in the process makes libgomp stop spin-waiting: see InferenceThread)."""
    from models.inference.decoder import Decoder

    threads: set[str] = set()
    real_load, real_step = app.serving.engine._load, Decoder.step

    def load(*args: object) -> Served:
        threads.add(threading.current_thread().name)
        return real_load(*args)  # type: ignore[arg-type]

    def step(self: Decoder) -> object:
        threads.add(threading.current_thread().name)
        return real_step(self)

    monkeypatch.setattr(app.serving.engine, "_load", load)
    monkeypatch.setattr(Decoder, "step", step)

    async def main() -> list[str]:
        engine = ModelCache(1 << 30, 4, "cpu")
        a, b = await asyncio.gather(engine.get("a", model_dirs[0]), engine.get("b", model_dirs[1]))
        jobs = [collect(engine, served, [1, 2, 3], 8) for served in (a, b, a, b)]
        return list(await asyncio.gather(*jobs))

    texts = asyncio.run(main())
    assert threads == {"inference"}
    assert texts[0] == texts[2] and texts[1] == texts[3]  # each model decodes its own rows


def test_the_cache_is_bounded_by_bytes(model_dirs: list[Path]) -> None:
    async def main() -> None:
        engine = ModelCache(1 << 30, 4, "cpu")
        a = await engine.get("a", model_dirs[0])
        engine.max_bytes = int(a.nbytes * 1.5)  # room for one model
        await collect(engine, a, [1, 2, 3], 5)
        b = await engine.get("b", model_dirs[1])
        assert list(engine.entries) == [("b", "fp32")]
        assert engine.nbytes == b.nbytes
        await collect(engine, a, [1, 2, 3], 5)  # a request still holding an evicted model finishes
        a2 = await engine.get("a", model_dirs[0])
        assert a2 is not a and list(engine.entries) == [("a", "fp32")]

    asyncio.run(main())


def test_generation_never_blocks_the_event_loop(model_dirs: list[Path], tokenizer: Tokenizer) -> None:
    async def main() -> float:
        engine = ModelCache(1 << 30, 8, "cpu")
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.002)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        served = await engine.get("a", model_dirs[0])  # loading happens in a thread
        prompts = [tokenizer.encode(p) for p in ("At the", "So it goes", "Nadia has", "J")]
        await asyncio.gather(*(collect(engine, served, p, 50) for p in prompts))
        done.set()
        await tick
        return max(gaps)

    assert asyncio.run(main()) < 0.5


def test_served_rows_match_generate_ids(model_dirs: list[Path], tokenizer: Tokenizer) -> None:
    model, _ = load_model(model_dirs[1])
    prompts = [tokenizer.encode(p) for p in ("At the market, Nadia has", "So it", "Omar")]

    async def main() -> list[list[int]]:
        engine = ModelCache(1 << 30, 8, "cpu")
        served = await engine.get("b", model_dirs[1])
        rows = []
        for p in prompts:
            rows.append(asyncio.create_task(_tokens(engine, served, p)))
        return list(await asyncio.gather(*rows))

    got = asyncio.run(main())
    want = [generate_ids(model, [p], Sampling(max_new_tokens=12), eos_id=tokenizer.eos_id)[0] for p in prompts]
    assert [tokenizer.decode(w) for w in want] == [tokenizer.decode(g) for g in got]


async def _tokens(engine: ModelCache, served: Served, prompt: list[int]) -> list[int]:
    from models.inference.decoder import Row

    row = Row(prompt, Sampling(max_new_tokens=12))
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    served.batcher.submit(row, lambda r, d: loop.call_soon_threadsafe(done.set) if r.finish_reason else None)
    await done.wait()
    return row.tokens
