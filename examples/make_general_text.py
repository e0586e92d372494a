#!/usr/bin/env python3
"""Write general English text for the SmolLM2 examples: prose paragraphs of the docstrings
of this Python's standard library, read from its source files (parsed with `ast`, nothing
imported). The text is the Python developers', read from the local installation: nothing of
it is shipped with Stagecraft, and any Python 3.10+ can make it.

It is unlike the example's invented world (examples/make_data.py), so it measures what a
fine-tune costs a pretrained model in general ability:

  general.txt          paragraphs of ~80% of the modules: the text the alternating
                       example (examples/smollm2_multistep.yaml) trains on between task steps
  general_heldout.txt  paragraphs of the other ~20% of the modules, never trained on: the
                       perplexity both SmolLM2 examples report before and after

Modules are assigned to one file or the other by a hash of their path, so the held-out text
is from modules the alternation never saw. A paragraph is kept when it reads as prose: at
least 12 words, mostly letters, no doctest, markup or signature lines. The output depends
only on the Python version (its standard library's text) and the options.

  python examples/make_general_text.py                  # writes examples/data/general*.txt
  python examples/make_general_text.py --out /tmp/d --max-paragraphs 4000
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import sysconfig
import zlib
from collections.abc import Iterator
from pathlib import Path

SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "tkinter", "turtledemo", "site-packages", "ensurepip", "pydoc_data"}
HELDOUT_EVERY = 5  # one module in five (by path hash) is held out
MIN_WORDS = 12
NOT_PROSE = re.compile(r">>>|\.\. |::|:param|:return|:type|:raises|\bdef |\w+\(.*\)\s*->|={3,}|-{3,}|\*\*kw|^\s*[-*]\s")


def module_files(stdlib: Path) -> Iterator[Path]:
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if not SKIP_DIRS.intersection(rel.parts[:-1]) and not rel.name.startswith("test_"):
            yield path


def docstrings(source: str) -> Iterator[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc


def prose(doc: str) -> Iterator[str]:
    """The docstring's paragraphs that read as running text, each on one line."""
    for block in re.split(r"\n\s*\n", doc):
        if NOT_PROSE.search(block) or any(line.startswith("    ") for line in block.splitlines()):
            continue
        text = " ".join(block.split())
        words = text.split()
        letters = sum(ch.isalpha() or ch == " " for ch in text)
        if len(words) >= MIN_WORDS and letters >= 0.85 * len(text) and text[0].isupper() and text[-1] in ".!?":
            yield text


def paragraphs(stdlib: Path) -> tuple[list[str], list[str]]:
    train: list[str] = []
    heldout: list[str] = []
    seen: set[str] = set()
    for path in module_files(stdlib):
        rel = path.relative_to(stdlib).as_posix()
        target = heldout if zlib.crc32(rel.encode()) % HELDOUT_EVERY == 0 else train
        for doc in docstrings(path.read_text(encoding="utf-8", errors="replace")):
            for text in prose(doc):
                if text not in seen:
                    seen.add(text)
                    target.append(text)
    return train, heldout


def write(out: Path, max_paragraphs: int | None = None, stdlib: Path | None = None) -> tuple[Path, Path]:
    train, heldout = paragraphs(stdlib or Path(sysconfig.get_paths()["stdlib"]))
    if max_paragraphs is not None:
        train, heldout = train[:max_paragraphs], heldout[: max(1, max_paragraphs // (HELDOUT_EVERY - 1))]
    if not train or not heldout:
        raise SystemExit(f"make_general_text.py: no prose docstrings found under {stdlib}")
    out.mkdir(parents=True, exist_ok=True)
    files = out / "general.txt", out / "general_heldout.txt"
    for path, lines in zip(files, (train, heldout), strict=True):
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="make_general_text.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    here = Path(__file__).resolve().parent
    parser.add_argument("--out", type=Path, default=here / "data", help="output folder (default: %(default)s)")
    parser.add_argument("--max-paragraphs", type=int, help="keep at most this many training paragraphs")
    parser.add_argument("--stdlib", type=Path, help="a standard library folder (default: this Python's)")
    args = parser.parse_args(argv)
    if args.max_paragraphs is not None and args.max_paragraphs < 1:
        parser.error(f"--max-paragraphs: must be at least 1, got {args.max_paragraphs}")
    files = write(args.out, args.max_paragraphs, args.stdlib)
    sizes = ", ".join(f"{p.name} {len(p.read_text(encoding='utf-8').splitlines())} lines" for p in files)
    print(f"wrote {sizes} in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
