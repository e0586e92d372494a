"""What an operation of a Jinja2 template costs, measured before it runs (models.data.bounded_jinja).

A value's `size` is what printing it would write, roughly: a string's characters, a number's
digits, a container's elements counted through every level of nesting (a list holding the same
list twice counts it twice, as its text would; computed once per object and remembered). An
operation that copies, compares, hashes or prints a value is charged its size; one whose result
can be larger than its inputs (a repetition, a padding, a replace, a join, a format, a JSON dump
with indentation) has its result's size predicted, and `Limits.check` refuses it over the limit
before it allocates anything.
"""

from __future__ import annotations

import re
import string
from typing import Any

from jinja2.exceptions import SecurityError
from jinja2.runtime import LoopContext, Macro
from jinja2.utils import Namespace

MAX_INT_BITS = 1 << 16  # integers a template computes (about 20,000 digits)
MAX_WIDTH = 100_000  # a width or precision in a format string
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")
_CONTAINERS = (list, tuple, dict, Namespace)


class Sizes:
    """Sizes of values, each container measured once per render (a namespace, which changes,
    and what holds one, every time). A cycle (through a namespace) prints as `...`."""

    def __init__(self) -> None:
        self.known: dict[int, tuple[object, int, int, int]] = {}  # id -> (object, kept alive; size, depth, nodes)
        self.active: set[int] = set()

    def size(self, value: Any) -> int:
        if type(value) is str:
            return len(value) + 2
        return self._walk(value)[0]

    def shape(self, value: Any) -> tuple[int, int, int]:
        """(size, depth of nesting, number of values inside)."""
        return self._walk(value)[:3]

    def _walk(self, value: Any) -> tuple[int, int, int, bool]:
        if isinstance(value, str):
            return len(value) + 2, 0, 1, False
        if isinstance(value, int):
            return value.bit_length() // 3 + 2, 0, 1, False
        if isinstance(value, range):
            return 8 * min(len(value), 1 << 62) + 2, 1, len(value), False
        if not isinstance(value, _CONTAINERS):
            return 16, 0, 1, False  # a number, None, a macro, an undefined: a short repr
        key = id(value)
        if key in self.known:
            return (*self.known[key][1:], False)
        if key in self.active:
            return 5, 0, 1, True
        self.active.add(key)
        try:
            if isinstance(value, Namespace):
                attrs = value._Namespace__attrs
                children: Any = [*attrs.keys(), *attrs.values()]
            else:
                children = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            size, depth, count, changing = 2, 0, 1, isinstance(value, Namespace)
            for child in children:
                if type(child) is str:
                    size, count = size + len(child) + 4, count + 1
                    continue
                s, d, n, c = self._walk(child)
                size, depth, count, changing = size + s + 2, max(depth, d), count + n, changing or c
        finally:
            self.active.discard(key)
        if not changing:
            self.known[key] = (value, size, depth + 1, count)
        return size, depth + 1, count, changing


def percent_size(fmt: str, args: Any, sizes: Sizes) -> int:
    """The largest text `fmt % args` can be."""
    specs = _PERCENT_SPEC.findall(fmt)
    if any("*" in (w, p) for w, p in specs):
        raise SecurityError("a chat template may not take a format width from its arguments")
    widths = sum(int(w or 0) + int(p or 0) for w, p in specs)
    values = list(args.values()) if isinstance(args, dict) else list(args) if isinstance(args, tuple) else [args]
    largest = max((sizes.size(v) for v in values), default=0)
    return len(fmt) + widths + len(specs) * largest


def format_size(fmt: str, args: Any, kwargs: dict[str, Any], sizes: Sizes) -> int:
    """The largest text `fmt.format(*args, **kwargs)` can be."""
    fields, widths = 0, 0
    try:
        for _, name, spec, _ in string.Formatter().parse(fmt):
            if name is None:
                continue
            if spec and "{" in spec:
                raise SecurityError("a chat template may not take a format width from its arguments")
            fields += 1
            widths += sum(int(n) for n in re.findall(r"\d+", spec or ""))
    except ValueError:
        return len(fmt)  # a malformed format: format() raises without building anything
    largest = max((sizes.size(v) for v in [*args, *kwargs.values()]), default=0)
    return len(fmt) + widths + fields * largest


def str_method(name: str, s: str, args: tuple[Any, ...], kwargs: dict[str, Any], sizes: Sizes) -> tuple[int, int]:
    """(work, result size) of calling the str method `name` on `s`."""
    arg = args[0] if args else None
    if name in ("center", "ljust", "rjust", "zfill"):
        out = max(len(s), arg if isinstance(arg, int) else 0)
    elif name == "expandtabs":
        tab = arg if isinstance(arg, int) else kwargs.get("tabsize", 8)
        out = len(s) + s.count("\t") * max(int(tab), 0)
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        count = s.count(args[0]) if args[0] else len(s) + 1
        if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
            count = min(count, args[2])
        out = len(s) + count * len(args[1])
    elif name == "join":
        items = list(arg) if isinstance(arg, (list, tuple, dict, str)) else []
        out = sum(sizes.size(x) for x in items) + len(s) * len(items)
    elif name in ("format", "format_map"):
        out = format_size(s, args if name == "format" else (), kwargs if name == "format" else dict(arg or {}), sizes)
    elif name == "translate":
        table = arg if isinstance(arg, dict) else {}
        out = len(s) * max((sizes.size(v) for v in table.values()), default=1)
    elif name in ("split", "rsplit", "splitlines", "partition", "rpartition"):
        return 9 * len(s), len(s) + 1  # a list of strings: pointers and string headers to write
    elif name in ("upper", "lower", "title", "capitalize", "swapcase", "casefold", "encode"):
        out = 4 * len(s)  # case may grow a little (ß -> SS); encode writes up to 4 bytes a character
    else:
        out = len(s)
    return len(s) + sum(sizes.size(a) for a in args) + out, out


def binop(op: str, left: Any, right: Any, sizes: Sizes) -> tuple[int, int]:
    """(work, result size) of `left op right`; result size 0 where it cannot grow."""
    seqs = (str, list, tuple)
    if op == "*" and isinstance(left, int) and isinstance(right, seqs):
        left, right = right, left
    if op == "*" and isinstance(left, seqs) and isinstance(right, int):
        out = len(left) * max(right, 0)
        return out, out
    if op in ("*", "**") and isinstance(left, int) and isinstance(right, int):
        bits = left.bit_length() + right.bit_length()
        if op == "**":
            bits = left.bit_length() * max(right, 0) if abs(left) > 1 else 1
        if bits > MAX_INT_BITS:
            raise SecurityError(f"a chat template may not compute a number over {MAX_INT_BITS} bits")
        return bits // 8, 0
    if op == "+" and isinstance(left, seqs) and isinstance(right, seqs):
        out = len(left) + len(right)
        return out, out
    if op == "%" and isinstance(left, str):
        out = percent_size(left, right, sizes)
        return len(left) + out, out
    return 0, 0


def call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any], sizes: Sizes) -> tuple[int, int]:
    """(work, result size) of a call a template makes (its own macros cost nothing here: their
    bodies are metered as they run)."""
    obj = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format at attribute access
    owner = getattr(obj, "__self__", None)
    if isinstance(owner, str) and not isinstance(obj, type):
        return str_method(getattr(obj, "__name__", ""), owner, args, kwargs, sizes)
    if isinstance(obj, (Macro, LoopContext)):
        return 0, 0
    work = sum(sizes.size(a) for a in args) + sum(sizes.size(v) for v in kwargs.values())
    if isinstance(owner, (list, tuple, dict)):
        work += sizes.size(owner) if getattr(obj, "__name__", "") in ("index", "count") else len(owner)
    if getattr(obj, "__name__", "") == "generate_lorem_ipsum":  # lipsum(n): n paragraphs of up to 100 words
        n = args[0] if args and isinstance(args[0], int) else 5
        return work + 1000 * n, 1000 * n
    return work, 0


def _first(args: tuple[Any, ...], kwargs: dict[str, Any], key: str, default: Any) -> Any:
    return args[0] if args else kwargs.get(key, default)


# Filters whose cost does not grow with their input (jinja2's built-ins, by name).
CONSTANT_FILTERS = {"length", "count", "first", "last", "default", "d", "int", "float", "abs", "round",
                    "attr", "safe", "random", "filesizeformat", "items"}  # fmt: skip


def _filter_out(name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any], sizes: Sizes) -> int:
    """The largest result of a built-in filter whose result may outgrow its input, else 0."""
    n = len(value) if hasattr(value, "__len__") else 0
    if name == "center":
        return max(n, int(_first(args, kwargs, "width", 80)))
    if name == "indent":
        width = _first(args, kwargs, "width", 4)
        lines = value.count("\n") + 1 if isinstance(value, str) else 1
        return n + lines * (width if isinstance(width, int) else len(str(width)))
    if name == "wordwrap":
        wrap = kwargs.get("wrapstring", args[2] if len(args) > 2 else None) or "\n"
        return n * (1 + len(str(wrap)))
    if name == "replace" and isinstance(value, str) and len(args) >= 2:
        return str_method("replace", value, tuple(str(a) for a in args[:2]) + args[2:], {}, sizes)[1]
    if name == "join":
        sep = str(_first(args, kwargs, "d", ""))
        items = list(value) if isinstance(value, (list, tuple, dict, str)) else []
        return sum(sizes.size(x) for x in items) + len(sep) * len(items)
    if name == "format" and isinstance(value, str):
        return percent_size(value, kwargs or args, sizes)
    if name in ("tojson", "pprint"):
        indent = _first(args, kwargs, "indent", None) if name == "tojson" else 1
        step = indent if isinstance(indent, int) else len(str(indent or ""))
        size, depth, count = sizes.shape(value)
        return size + count * (1 + max(step, 0) * depth)  # a line each, indented by depth
    if name in ("batch", "slice"):
        return n + 2 * int(_first(args, kwargs, "linecount" if name == "batch" else "slices", 1))
    if name == "sum" and not isinstance(kwargs.get("start", args[1] if len(args) > 1 else 0), (int, float)):
        return n * sizes.size(value)  # summing lists or strings copies the total so far at each step
    if name in ("escape", "e", "forceescape", "urlize", "urlencode", "xmlattr"):
        return 8 * sizes.size(value) + 64
    return 0


def filter_cost(name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any], sizes: Sizes) -> tuple[int, int]:
    """(work, result size) of the filter `name` (unknown ones are charged as the costliest)."""
    if name in CONSTANT_FILTERS:
        return 0, 0
    out = _filter_out(name, value, args, kwargs, sizes)
    work = sizes.size(value) + sum(sizes.size(a) for a in args) + sum(sizes.size(v) for v in kwargs.values())
    return work + out, out


COMPARING_TESTS = {"eq", "ne", "lt", "le", "gt", "ge", "in", "equalto", "greaterthan", "lessthan", "==", "!=",
                   "<", "<=", ">", ">="}  # fmt: skip


def test_cost(name: str, value: Any, args: tuple[Any, ...], sizes: Sizes) -> int:
    if name not in COMPARING_TESTS:
        return 0
    return sizes.size(value) + sum(sizes.size(a) for a in args)
