"""The text a decoding row may hand out while it streams (models.inference.decoder): nothing
past a stop string, nor an unfinished character, nor the start of what may become a stop
string. The final text is `models.inference.generate.finished_text`."""

from __future__ import annotations

from models.inference.generate import finished_text


def streamable_text(raw: str, stop: list[str], supervised: bool) -> str | None:
    """The part of `raw` (a row's tokens decoded so far) that is final, as `finished_text`
    gives it; None once a stop string has appeared (the row is done)."""
    if any(s in raw for s in stop):
        return None
    safe = raw.rstrip("\ufffd")
    hold = max((pending_prefix(safe, s) for s in stop), default=0)
    return finished_text(safe[: len(safe) - hold], None, supervised)  # (stop strings: checked above)


def pending_prefix(text: str, stop: str) -> int:
    """The length of the longest proper prefix of `stop` that `text` ends with: what must be
    held back while it may still become `stop`. Knuth-Morris-Pratt over the last len(stop)-1
    characters, so linear in len(stop) (checking every prefix with endswith is quadratic)."""
    if len(stop) < 2:
        return 0
    fail = [0] * len(stop)  # fail[i]: longest proper prefix of stop[:i+1] that is also its suffix
    k = 0
    for i in range(1, len(stop)):
        while k and stop[i] != stop[k]:
            k = fail[k - 1]
        if stop[i] == stop[k]:
            k += 1
        fail[i] = k
    k = 0
    for ch in text[-(len(stop) - 1) :]:
        while k and (k == len(stop) or ch != stop[k]):
            k = fail[k - 1]
        if ch == stop[k]:
            k += 1
    return k if k < len(stop) else fail[k - 1]
