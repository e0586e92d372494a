"""A GGUF file's metadata sized before anything parses it.

The `gguf` package's reader makes Python objects of every metadata element when it opens a
file: a 1,000,000-token vocabulary took it 40 s and 3 GB before our tokenizer saw a token. This
scan walks the header with offsets alone (the key/value section; no tensor is read) and
refuses a file whose metadata is larger than any published model's: more than MAX_VOCAB
elements in an array (the vocabulary, its scores, types and merges), a token over
MAX_TOKEN_BYTES, a vocabulary over MAX_VOCAB_BYTES in all, a string (a chat template) over
MAX_STRING_BYTES, or more than MAX_KEYS keys or MAX_TENSORS tensors.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from models.errors import GGUFError

MAX_VOCAB = 300_000  # the largest vocabularies published have 262,144 tokens (Gemma 3)
MAX_TOKEN_BYTES = 1024
MAX_VOCAB_BYTES = 16 << 20
MAX_STRING_BYTES = 1 << 20
MAX_KEYS = 4096
MAX_TENSORS = 65_536
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # value type -> bytes
_STRING, _ARRAY = 8, 9
_TOKENS = "tokenizer.ggml.tokens"


class _Damaged(Exception):
    """What the scan finds wrong with a header (check_header words it as a GGUFError)."""


class _Scan:
    def __init__(self, data: mmap.mmap | bytes, order: str):
        self.data, self.order, self.at = data, order, 0

    def take(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        if self.at + size > len(self.data):
            raise _Damaged("the header ends early")
        (value,) = struct.unpack_from(self.order + fmt, self.data, self.at)
        self.at += size
        return int(value)

    def string(self, key: str, limit: int) -> str:
        n = self.take("Q")
        if n > limit:
            raise GGUFError(f"metadata {key}: a string of {n} bytes (the limit is {limit})")
        if self.at + n > len(self.data):
            raise _Damaged("the header ends early")
        text = bytes(self.data[self.at : self.at + n]).decode("utf-8", errors="replace")
        self.at += n
        return text

    def skip(self, key: str, kind: int, depth: int = 0) -> None:
        if kind in _FIXED:
            self.at += _FIXED[kind]
        elif kind == _STRING:
            self.string(key, MAX_STRING_BYTES)
        elif kind == _ARRAY and depth == 0:
            self.array(key)
        else:
            raise _Damaged(f"metadata {key}: value type {kind} is not one GGUF defines")

    def array(self, key: str) -> None:
        kind, count = self.take("I"), self.take("Q")
        if count > MAX_VOCAB:
            what = "a vocabulary" if key == _TOKENS else "an array"
            raise GGUFError(f"metadata {key}: {what} of {count:,} entries (the limit is {MAX_VOCAB:,})")
        if kind in _FIXED:
            self.at += _FIXED[kind] * count
            return
        total = 0
        for _ in range(count):
            if kind != _STRING:
                self.skip(key, kind, depth=1)
                continue
            limit = MAX_TOKEN_BYTES if key == _TOKENS else MAX_STRING_BYTES
            start = self.at
            self.string(key, limit)
            total += self.at - start
            if key == _TOKENS and total > MAX_VOCAB_BYTES:
                raise GGUFError(f"metadata {key}: over {MAX_VOCAB_BYTES:,} bytes of tokens")


def check_header(path: Path) -> None:
    """GGUFError if the GGUF at `path` declares more metadata than MAX_* allow (or is cut short)."""
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFError(f"{path.name}: not a readable GGUF file (no GGUF magic)")
        try:
            data: mmap.mmap | bytes = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            data = b""
    try:
        (version,) = struct.unpack_from("<I", data, 4) if len(data) >= 8 else (0,)
        scan = _Scan(data, "<" if version < 65536 else ">")  # a big-endian file's version reads byte-swapped
        scan.at = 8
        tensors, keys = scan.take("Q"), scan.take("Q")
        if tensors > MAX_TENSORS or keys > MAX_KEYS:
            limits = f"the limits are {MAX_TENSORS:,} and {MAX_KEYS:,}"
            raise GGUFError(f"{path.name}: {tensors:,} tensors and {keys:,} metadata keys ({limits})")
        for _ in range(keys):
            key = scan.string("(a key)", 65536)
            scan.skip(key, scan.take("I"))
    except _Damaged as exc:
        raise GGUFError(f"{path.name}: not a readable GGUF file ({exc})") from None
    finally:
        if isinstance(data, mmap.mmap):
            data.close()
