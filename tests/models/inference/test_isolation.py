"""One row never changes another's answer (issue 20): adapters whose weights or alpha are NaN or
infinite, served through the Decoder (no import check in the way), end their own rows with
finish_reason "error"; every clean row beside them, and every base row after them, alone or
in batches, decodes exactly what a fresh Decoder gives it alone. The two ways a NaN used to
cross (base rows borrowing an adapter's weights under a multiplied mask; keys and values a
finished row left in its cache slot, hidden by a mask but multiplied by 0) are checked directly."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace

import pytest
import torch

from models.data.tokenizer import Tokenizer
from models.families import FAMILIES
from models.families.build import Model
from models.inference.decoder import Decoder, Row
from models.inference.generate import Sampling
from models.inference.slot_cache import SlotCache
from models.lora import layers as lora
from models.spec import AdapterSpec
from tests.conftest import tiny_model
from tests.models.families.llama.test_model import peaked_llama

PROMPTS = ["At the market, Nadia has", "J", "Omar has 7 books, seven in", "So it goes. At the", "Hana"]
CLEAN = {
    "math": AdapterSpec(type="lora", rank=4, alpha=8, targets=["attention", "mlp"]),
    "chat": AdapterSpec(type="lora", rank=2, alpha=2, targets=["attention"]),
}
HOSTILE = ["nan", "inf", "alpha-nan", "one-nan"]  # NaN everywhere, +inf everywhere, lora_alpha NaN, one NaN in one B
FAMILY_NAMES = ["gpt", "llama"]


def peaked_gpt(vocab: int) -> Model:
    """Large random weights: confident, varied greedy choices (no near-ties)."""
    model = tiny_model(vocab, seed=1, block_size=48)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    return model.eval()


def base_model(arch: str, vocab: int) -> Model:
    return peaked_gpt(vocab) if arch == "gpt" else peaked_llama(vocab, n_kv_head=2)


def make_adapter(model: Model, name: str, spec: AdapterSpec, seed: int) -> lora.Adapter:
    """An adapter as after training (B not zero), big enough to change the tokens."""
    holder = copy.deepcopy(model)
    lora.add_adapter(holder, FAMILIES[model.config.arch].lora, name, spec, seed=seed)
    with torch.no_grad():
        for p in lora.adapter_params(holder, name):
            p.normal_(0.0, 0.4, generator=torch.Generator().manual_seed(100 + seed + p.numel()))
    return lora.extract(holder, name)


def hostile(clean: lora.Adapter, kind: str) -> lora.Adapter:
    if kind == "alpha-nan":
        return replace(clean, alpha=math.nan, scale=None)
    if kind == "one-nan":
        layers = dict(clean.layers)
        path = sorted(layers)[-1]
        b = layers[path][1].clone()
        b[0, 0] = math.nan
        layers[path] = (layers[path][0], b)
        return replace(clean, layers=layers)
    value = math.nan if kind == "nan" else math.inf
    return replace(
        clean, layers={p: (a.clone().fill_(value), b.clone().fill_(value)) for p, (a, b) in clean.layers.items()}
    )


def adapter_set(model: Model) -> dict[str, lora.Adapter]:
    """One hostile adapter of each kind (made from the first clean one), then the clean ones:
    a hostile adapter first in the bank, where base rows once borrowed their (zeroed) pair."""
    clean = {name: make_adapter(model, name, spec, k) for k, (name, spec) in enumerate(CLEAN.items())}
    return {kind: hostile(clean["math"], kind) for kind in HOSTILE} | clean


@dataclass(frozen=True)
class Ask:
    """What a row asks for; `row()` makes a new Row of it."""

    prompt: tuple[int, ...]
    sampling: Sampling
    adapter: str | None = None
    stop: tuple[str, ...] = ()
    supervised: bool = False
    ignore_eos: bool = False
    stream: bool = False

    def row(self) -> Row:
        return Row(list(self.prompt), self.sampling, list(self.stop), self.supervised, self.stream, self.ignore_eos,
                   adapter=self.adapter)  # fmt: skip


@dataclass
class Served:
    """A base, its adapters and the decoder-wide end ids: what a fresh Decoder is made of."""

    model: Model
    tok: Tokenizer
    adapters: dict[str, lora.Adapter]
    end_ids: frozenset[int] = frozenset()
    alone_cache: dict[Ask, tuple[list[int], str, str | None]] = field(default_factory=dict)

    def decoder(self, max_batch: int = 4) -> Decoder:
        dec = Decoder(self.model, self.tok, max_batch)
        dec.end_ids |= self.end_ids
        for name, adapter in self.adapters.items():
            dec.add_adapter(name, adapter)
        return dec

    def alone(self, ask: Ask) -> tuple[list[int], str, str | None]:
        """(tokens, text, finish_reason) of the row decoded alone by a fresh Decoder."""
        if ask not in self.alone_cache:
            [row] = decode(self.decoder(1), [(0, ask.row())])
            self.alone_cache[ask] = (row.tokens, row.text, row.finish_reason)
        return self.alone_cache[ask]


def decode(dec: Decoder, schedule: list[tuple[int, Row]]) -> list[Row]:
    """Add each row at its step (rows of one step in order), step until every row has finished."""
    rows = [r for _, r in schedule]
    step = 0
    while step <= max((s for s, _ in schedule), default=0) or dec.busy:
        for s, r in schedule:
            if s == step:
                dec.add(r)
        dec.step()
        step += 1
        assert step < 1000
    assert all(r.finish_reason is not None for r in rows)
    return rows


def check(served: Served, asks: list[Ask], rows: list[Row]) -> None:
    """Hostile rows ended with an error; every other row is what it is alone."""
    for ask, row in zip(asks, rows):
        if ask.adapter in HOSTILE:
            assert row.finish_reason == "error" and row.error and "non-finite logits" in row.error, ask
        else:
            assert (row.tokens, row.text, row.finish_reason) == served.alone(ask), ask


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def served(request: pytest.FixtureRequest, tokenizer: Tokenizer) -> Served:
    model = base_model(request.param, tokenizer.vocab_size)
    return Served(model, tokenizer, adapter_set(model))


def asks_of(tok: Tokenizer, adapters: list[str | None], sampled: bool = False) -> list[Ask]:
    out = []
    for k, name in enumerate(adapters):
        s = Sampling(max_new_tokens=8 + 3 * k, temperature=0.9 if sampled and k % 2 else 0.0, top_k=40, seed=k)
        out.append(Ask(tuple(tok.encode(PROMPTS[k % len(PROMPTS)])), s, name, ignore_eos=True))
    return out


@pytest.mark.parametrize("join_every", [0, 1, 2])
def test_hostile_rows_end_alone_and_their_base_stays_clean_afterwards(served: Served, join_every: int) -> None:
    dec = served.decoder(max_batch=4)
    names: list[str | None] = ["nan", None, "math", "alpha-nan", None, "inf", "chat", "one-nan", None]
    asks = asks_of(served.tok, names, sampled=True)  # sampled hostile rows too: no sampler sees a NaN
    rows = decode(dec, [(k * join_every, a.row()) for k, a in enumerate(asks)])
    check(served, asks, rows)
    assert {r.finish_reason for r, n in zip(rows, names) if n is None} == {"length"}
    assert rows[2].tokens != served.alone(replace(asks[2], adapter=None))[0]  # the clean adapter does change the text
    # After them, on the same decoder: base rows alone, then batched with different arrival times.
    base = asks_of(served.tok, [None] * 6)
    for ask in base:
        check(served, [ask], decode(dec, [(0, ask.row())]))
    for every in (0, 1, 3):
        check(served, base, decode(dec, [(k * every, a.row()) for k, a in enumerate(base)]))


def test_a_freed_slot_and_compacted_columns_hold_zeros(served: Served) -> None:
    """What a row leaves in its slot is zeroed, so a gap of a later row, hidden by the key
    mask but still multiplied by its zero weight, can never be NaN."""
    config = served.model.config
    cache = SlotCache(config, 3, torch.device("cpu"), torch.float32)
    tensors = [*cache.k, *cache.v]
    for _ in range(3):
        cache.admit(5)
    cache.length = 8  # three rows of 5 tokens that decoded 3 more (NaN: a broken adapter's)
    for t in tensors:
        t[:, :, :8] = math.nan
    cache.remove(0)  # the last row moves into slot 0; slot 2 is free
    assert all(bool((t[2] == 0).all()) for t in tensors)
    cache.remove(1)  # the last row leaves its own slot
    assert all(bool((t[1:] == 0).all()) for t in tensors)
    assert all(bool(t[0, :, :8].isnan().all()) for t in tensors)  # the row that stays is untouched
    cache.admit(2)  # a 2-token prompt in slot 1, then a token at column 8: a gap at 2..7
    cache.lens[1] = 3
    cache.valid[1, 8] = True
    for t in tensors:
        t[1, :, :2], t[1, :, 8] = 2.0, 1.0
    cache.length = config.block_size  # the shared column at the end of the context: compaction
    cache.prepare()
    assert cache.compactions == 1
    for t in tensors:
        assert bool((t[1, :, :2] == 2).all()) and bool((t[1, :, 2] == 1).all()) and bool((t[1, :, 3:] == 0).all())
        assert bool((t[0, :, 5:] == 0).all())  # row 0's own columns past its 5 tokens are freed too


def test_base_rows_never_read_an_adapters_weights(served: Served) -> None:
    """A base row beside a NaN adapter's row in one projection gets exactly the base output."""
    bank = served.decoder().net.adapters
    for path in bank.a:
        members = bank.fused.get(path, [path])
        x = torch.randn(4, bank.a[path].size(1), generator=torch.Generator().manual_seed(0))
        y = torch.randn(4, sum(bank.shapes[m][1] for m in members), generator=torch.Generator().manual_seed(1))
        rows = torch.tensor([bank.index("nan"), 0, bank.index("inf"), 0])
        got = bank.add_delta(path, x, y.clone(), rows)
        assert torch.equal(got[1], y[1]) and torch.equal(got[3], y[3]), path
        assert not bool(got[0].isfinite().all()) and not bool(got[2].isfinite().all())
