#!/usr/bin/env python3
"""Generate the data that examples/multistep.yaml trains on: a small invented world.

Sixteen people keep ten kinds of things at six places; numbers from 0 to 999 are spelled
in English and in French. From that world come

  corpus.txt    plain text for pretraining, one sentence or short story per line:
                  40% number spellings   "The number 75 is written seventy-five in English and ..."
                  30% stories + a fact   "At the garden, Ana has 3 maps, ... So Ana has 3 maps."
                  30% counting lines     "Omar counted twelve pens, which is 12, or douze en français."
  pairs.jsonl   supervised task records, the three tasks in turn (translate, qa, summarize):
                  translate  English number words -> French number words
                  qa         a story and "How many <things> does <person> have?" -> the number
                  summarize  a story -> "<person> has the most: <n> <things>."

The output depends only on the options: the same --seed gives the same files, byte for byte.
Standard library only, so it runs before anything is installed.

  python examples/make_data.py                      # writes examples/data/{corpus.txt,pairs.jsonl}
  python examples/make_data.py --out /tmp/d --pairs 12000 --seed 3
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PEOPLE = [
    "Alice",
    "Bruno",
    "Chen",
    "Dara",
    "Emil",
    "Fatima",
    "Goro",
    "Hana",
    "Ivan",
    "Jia",
    "Kofi",
    "Lena",
    "Mateo",
    "Nadia",
    "Omar",
    "Priya",
]
THINGS = ["apples", "books", "coins", "lamps", "maps", "pens", "shells", "stamps", "tickets", "vases"]
PLACES = ("market", "harbour", "library", "station", "garden", "museum")
LARGEST = 999  # numbers are spelled from 0 up to this
STORY_COUNTS = range(2, 61)  # how many things a person in a story has
SHARE_NUMBER_LINES, SHARE_STORY_LINES = 0.4, 0.3  # the rest of the corpus is counting lines

UNITS_EN = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
DECADES_EN = {2: "twenty", 3: "thirty", 4: "forty", 5: "fifty", 6: "sixty", 7: "seventy", 8: "eighty", 9: "ninety"}
UNITS_FR = [
    "zéro",
    "un",
    "deux",
    "trois",
    "quatre",
    "cinq",
    "six",
    "sept",
    "huit",
    "neuf",
    "dix",
    "onze",
    "douze",
    "treize",
    "quatorze",
    "quinze",
    "seize",
    "dix-sept",
    "dix-huit",
    "dix-neuf",
]
DECADES_FR = {2: "vingt", 3: "trente", 4: "quarante", 5: "cinquante", 6: "soixante"}


def english(n: int) -> str:
    """American-style English words: 'three hundred forty-two' (no 'and')."""
    hundreds, below = divmod(n, 100)
    if hundreds:
        head = f"{UNITS_EN[hundreds]} hundred"
        return head if below == 0 else f"{head} {english(below)}"
    if below < 20:
        return UNITS_EN[below]
    tens, unit = divmod(below, 10)
    return DECADES_EN[tens] if unit == 0 else f"{DECADES_EN[tens]}-{UNITS_EN[unit]}"


def _french_below_100(n: int) -> str:
    if n < 20:
        return UNITS_FR[n]
    if n >= 80:  # quatre-vingts, quatre-vingt-un ... quatre-vingt-dix-neuf (no "et")
        return "quatre-vingts" if n == 80 else f"quatre-vingt-{UNITS_FR[n - 80]}"
    # 60..79 count on from soixante: soixante-dix, soixante et onze, soixante-douze ...
    base, rest = (60, n - 60) if n >= 60 else (n - n % 10, n % 10)
    word = DECADES_FR[base // 10]
    if rest == 0:
        return word
    if rest in (1, 11):
        return f"{word} et {UNITS_FR[rest]}"
    return f"{word}-{UNITS_FR[rest]}"


def french(n: int) -> str:
    """Traditional French spelling (1990 reform not applied): 'deux cents', 'deux cent un'."""
    hundreds, below = divmod(n, 100)
    if not hundreds:
        return _french_below_100(below)
    head = "cent" if hundreds == 1 else f"{UNITS_FR[hundreds]} cent" + ("s" if below == 0 else "")
    return head if below == 0 else f"{head} {_french_below_100(below)}"


@dataclass(frozen=True)
class Holding:
    person: str
    count: int
    thing: str


@dataclass(frozen=True)
class Story:
    """Three different people at one place, each with a different number of things."""

    place: str
    holdings: tuple[Holding, Holding, Holding]

    @classmethod
    def draw(cls, rng: random.Random) -> Story:
        people = rng.sample(PEOPLE, 3)
        counts = rng.sample(STORY_COUNTS, 3)  # distinct counts: "who has the most" is never a tie
        a, b, c = (Holding(p, n, rng.choice(THINGS)) for p, n in zip(people, counts, strict=True))
        return cls(rng.choice(PLACES), (a, b, c))

    def text(self) -> str:
        a, b, c = (f"{h.person} has {h.count} {h.thing}" for h in self.holdings)
        return f"At the {self.place}, {a}, {b} and {c}."

    def most(self) -> Holding:
        return max(self.holdings, key=lambda h: h.count)


class World:
    """All draws go through one seeded generator, in the order the files are written."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def number(self) -> int:
        return self.rng.randint(0, LARGEST)

    def corpus_line(self) -> str:
        roll, n = self.rng.random(), self.number()
        if roll < SHARE_NUMBER_LINES:
            return f"The number {n} is written {english(n)} in English and {french(n)} in French."
        if roll < SHARE_NUMBER_LINES + SHARE_STORY_LINES:
            story = Story.draw(self.rng)
            fact = self.rng.choice(story.holdings)
            return f"{story.text()} So {fact.person} has {fact.count} {fact.thing}."
        who, what = self.rng.choice(PEOPLE), self.rng.choice(THINGS)
        return f"{who} counted {english(n)} {what}, which is {n}, or {french(n)} en français."

    def translate(self) -> dict[str, Any]:
        n = self.number()
        return {
            "task": "translate",
            "source": english(n),
            "target": french(n),
            "source_lang": "en",
            "target_lang": "fr",
        }

    def qa(self) -> dict[str, Any]:
        story = Story.draw(self.rng)
        asked = self.rng.choice(story.holdings)
        question = f"How many {asked.thing} does {asked.person} have?"
        return {"task": "qa", "context": story.text(), "question": question, "answer": str(asked.count)}

    def summarize(self) -> dict[str, Any]:
        story = Story.draw(self.rng)
        top = story.most()
        return {
            "task": "summarize",
            "document": story.text(),
            "summary": f"{top.person} has the most: {top.count} {top.thing}.",
        }

    def corpus(self, lines: int) -> Iterator[str]:
        for _ in range(lines):
            yield self.corpus_line()

    def pairs(self, count: int) -> Iterator[dict[str, Any]]:
        tasks = (self.translate, self.qa, self.summarize)
        for i in range(count):
            yield tasks[i % len(tasks)]()


def write(out: Path, seed: int = 0, pairs: int = 3000, corpus_lines: int = 20000) -> tuple[Path, Path]:
    """Write out/corpus.txt and out/pairs.jsonl; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    world = World(seed)
    corpus_path, pairs_path = out / "corpus.txt", out / "pairs.jsonl"
    with corpus_path.open("w", encoding="utf-8", newline="\n") as f:
        f.writelines(line + "\n" for line in world.corpus(corpus_lines))
    with pairs_path.open("w", encoding="utf-8", newline="\n") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in world.pairs(pairs))
    return corpus_path, pairs_path


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="make_data.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    here = Path(__file__).resolve().parent
    parser.add_argument("--out", type=Path, default=here / "data", help="output folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--pairs", type=positive, default=3000, help="task records (default: %(default)s)")
    parser.add_argument("--corpus-lines", type=positive, default=20000, help="corpus lines (default: %(default)s)")
    args = parser.parse_args(argv)
    corpus_path, pairs_path = write(args.out, args.seed, args.pairs, args.corpus_lines)
    print(f"wrote {corpus_path} ({args.corpus_lines} lines) and {pairs_path} ({args.pairs} records)", file=sys.stderr)


if __name__ == "__main__":
    main()
