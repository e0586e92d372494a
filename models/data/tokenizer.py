"""Byte-level BPE (Hugging Face `tokenizers`): train on named data, save with the model.

Special tokens: `<|endoftext|>` ends a document or a completion, `<|completion|>` marks
where a supervised prompt ends and the completion the model must produce begins.

A tokenizer of an imported model also carries what its model directory says about
conversations: the `chat_template`, every id that ends a generation (`end_ids`: the
model's own end-of-sequence and end-of-turn tokens as well as ours) and the generation
defaults. `models.formats.native` records them in config.json.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"
SEP = "<|completion|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [EOS, SEP, PAD]
FILENAME = "tokenizer.json"
LONG_TEXT = 100_000  # characters: longer texts are encoded without holding the interpreter


class Tokenizer:
    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        ids = [hf.token_to_id(t) for t in SPECIAL_TOKENS]
        present = [i for i in ids if i is not None]
        if len(present) != len(ids):
            raise ValueError(f"tokenizer lacks the special tokens {SPECIAL_TOKENS}")
        self.eos_id, self.sep_id, self.pad_id = present
        self.chat_template: str | None = None
        self.end_ids: list[int] = [self.eos_id]
        self.generation: dict[str, object] = {}

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> Tokenizer:
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(_chunks(texts), trainer=trainer)
        return cls(hf)

    @classmethod
    def load(cls, directory: Path) -> Tokenizer:
        return cls(HFTokenizer.from_file(str(directory / FILENAME)))

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(directory / FILENAME))

    @property
    def vocab_size(self) -> int:
        return int(self.hf.get_vocab_size())

    def encode(self, text: str) -> list[int]:
        if len(text) > LONG_TEXT:  # encode_batch releases the GIL; encode holds it (seconds for megabytes)
            return self.encode_batch([text])[0]
        return list(self.hf.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(e.ids) for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return str(self.hf.decode(ids, skip_special_tokens=True))


def _chunks(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for t in texts:
        batch.append(t)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
