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
  preference.jsonl       preference records for a `preference` stage (DPO and its kin), the
                         same three tasks in turn: the prompt as the task endpoints render it,
                         `chosen` the right answer, `rejected` a plausible wrong one:
                  translate  the French words of a near number (one, ten or a hundred off)
                  qa         another count the story mentions
                  summarize  the right count and things, another person of the story
  preference_chat.jsonl  the same records as message lists (the user turn, one assistant turn
                         each) for chat models such as SmolLM2-135M-Instruct

The output depends only on the options: the same --seed gives the same files, byte for byte
(the preference records draw from a generator of their own, so corpus.txt and pairs.jsonl
are the same with or without them). Standard library only, so it runs before anything is
installed.

  python examples/make_data.py       # writes examples/data/{corpus.txt,pairs.jsonl,preference*.jsonl}
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

    def __init__(self, seed: int | str):
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

    # --- preference records -----------------------------------------------------------

    def near_number(self, n: int) -> int:
        """A plausible wrong number: one, ten or a hundred away from `n`, within 0..LARGEST."""
        while True:
            m = n + self.rng.choice((-100, -10, -1, 1, 10, 100))
            if 0 <= m <= LARGEST:
                return m

    def translate_preference(self) -> Preference:
        n = self.number()
        prompt = translate_prompt(english(n), "en", "fr")
        return Preference("translate", prompt, french(n), french(self.near_number(n)))

    def qa_preference(self) -> Preference:
        story = Story.draw(self.rng)
        asked = self.rng.choice(story.holdings)
        other = self.rng.choice([h for h in story.holdings if h is not asked])  # counts differ in a story
        prompt = qa_prompt(f"How many {asked.thing} does {asked.person} have?", story.text())
        return Preference("qa", prompt, str(asked.count), str(other.count))

    def summarize_preference(self) -> Preference:
        story = Story.draw(self.rng)
        top = story.most()
        other = self.rng.choice([h for h in story.holdings if h is not top])
        chosen = f"{top.person} has the most: {top.count} {top.thing}."
        rejected = f"{other.person} has the most: {top.count} {top.thing}."  # the name swapped
        return Preference("summarize", summarize_prompt(story.text()), chosen, rejected)

    def preferences(self, count: int) -> Iterator[Preference]:
        tasks = (self.translate_preference, self.qa_preference, self.summarize_preference)
        for i in range(count):
            yield tasks[i % len(tasks)]()


# The task prompts as models/data/records.py renders them for training and the task endpoints
# (this script imports nothing of the project; tests/examples checks that the two agree).
LANGUAGE_NAMES = {"en": "English", "fr": "French"}


def translate_prompt(text: str, source_lang: str, target_lang: str) -> str:
    return f"Translate {LANGUAGE_NAMES[source_lang]} to {LANGUAGE_NAMES[target_lang]}: {text}\n"


def qa_prompt(question: str, context: str) -> str:
    return f"Context: {context}\nQuestion: {question}\nAnswer:"


def summarize_prompt(text: str) -> str:
    return f"Summarize: {text}\n"


@dataclass(frozen=True)
class Preference:
    """A prompt with a right answer (`chosen`) and a plausible wrong one (`rejected`)."""

    task: str
    prompt: str
    chosen: str
    rejected: str

    def plain(self) -> dict[str, Any]:
        """{prompt, chosen, rejected} as strings."""
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}

    def chat(self) -> dict[str, Any]:
        """The same as message lists: the prompt is the user turn (as a chat model's task records
        are rendered), each answer one assistant turn."""
        return {
            "prompt": [{"role": "user", "content": self.prompt.strip()}],
            "chosen": [{"role": "assistant", "content": self.chosen}],
            "rejected": [{"role": "assistant", "content": self.rejected}],
        }


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


def write_preference(out: Path, seed: int = 0, count: int = 900) -> tuple[Path, Path]:
    """Write out/preference.jsonl and out/preference_chat.jsonl (the same records as message
    lists); returns their paths. A generator of their own: the other files do not change."""
    out.mkdir(parents=True, exist_ok=True)
    records = list(World(f"preference-{seed}").preferences(count))
    paths = out / "preference.jsonl", out / "preference_chat.jsonl"
    for path, form in zip(paths, (Preference.plain, Preference.chat), strict=True):
        with path.open("w", encoding="utf-8", newline="\n") as f:
            f.writelines(json.dumps(form(r), ensure_ascii=False) + "\n" for r in records)
    return paths


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
    parser.add_argument(
        "--preference", type=positive, default=900, help="preference records, in each form (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    corpus_path, pairs_path = write(args.out, args.seed, args.pairs, args.corpus_lines)
    print(f"wrote {corpus_path} ({args.corpus_lines} lines) and {pairs_path} ({args.pairs} records)", file=sys.stderr)
    plain, chat = write_preference(args.out, args.seed, args.preference)
    print(f"wrote {plain} and {chat} ({args.preference} preference records each)", file=sys.stderr)


if __name__ == "__main__":
    main()
