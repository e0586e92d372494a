"""Jinja2 templates from untrusted sources (a model's chat template), rendered within bounds.

jinja2's ImmutableSandboxedEnvironment keeps a template away from Python's internals, but not
from running for ever (`{% for i in range(99999) %}{% for j in range(99999) %}`), from building
a string of a billion characters (`'a' * 10**9`), or from one Python operation on a value it
built as a DAG running for years (a list holding another twice, nested sixty deep: comparing
two of them takes 2**60 steps). A `Meter` bounds each render, counting, not timing, so a
template renders or is refused the same way on a busy machine as on an idle one:

- steps: each loop iteration, call, attribute or item lookup, operator, comparison, filter,
  test and piece of output is one; at most STEPS + 4 per unit of input;
- work: an operation whose cost grows with its data is charged the size of that data before
  it runs (models.data.jinja_costs); at most WORK + 16 per unit of input;
- no value, the output included, over MAX_VALUE + 4 per unit of input: an operation predicted
  to make one is refused before it allocates. A template adds to what its input holds, it
  does not multiply it: its output costs the tokenizer no more than a prompt the client
  could have sent as text.

The code generator sends what jinja2 compiles to plain Python through the environment too
(loop iterables, `~`, comparisons, slices, dict displays), so nothing escapes the meter.
Past a bound, rendering raises SecurityError (a TemplateError).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any

from jinja2 import Template, nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.exceptions import SecurityError
from jinja2.runtime import LoopContext, Undefined, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg

from models.data import jinja_costs as costs

STEPS = 50_000
WORK = 1 << 24
MAX_VALUE = 1 << 16
_COMPARE = {"eq": operator.eq, "ne": operator.ne, "gt": operator.gt, "gteq": operator.ge, "lt": operator.lt,
            "lteq": operator.le, "in": lambda a, b: a in b, "notin": lambda a, b: a not in b}  # fmt: skip


class Meter:
    """One render's budgets."""

    def __init__(self, input_size: int, sizes: costs.Sizes):
        self.max_steps, self.max_work = STEPS + 4 * input_size, WORK + 16 * input_size
        self.max_value = MAX_VALUE + 4 * input_size
        self.steps, self.work, self.sizes = self.max_steps, self.max_work, sizes


_METER: ContextVar[Meter | None] = ContextVar("bounded_jinja_meter", default=None)


def _sizes() -> costs.Sizes:
    meter = _METER.get()
    return costs.Sizes() if meter is None else meter.sizes  # compiling (constant folding): no meter


def _spend(work: int, out: int = 0) -> None:
    """One step and `work`, for an operation whose result has size `out`: SecurityError past a bound."""
    meter = _METER.get()
    limit = MAX_VALUE if meter is None else meter.max_value
    if out > limit:
        raise SecurityError(f"a value of {out} characters or elements is over the limit of {limit}")
    if meter is None:
        return
    meter.steps -= 1
    meter.work -= work
    if meter.steps < 0:
        raise SecurityError(f"over the limit of {meter.max_steps} steps (loop iterations, lookups, calls)")
    if meter.work < 0:
        raise SecurityError(f"over the limit of {meter.max_work} units of work (characters copied or compared)")


def _lazy(value: Any) -> bool:
    """An iterable that is no plain container (a generator, a dict view, a range): its size is
    unknown until it is iterated."""
    return isinstance(value, Iterable) and not isinstance(value, (str, list, tuple, dict, Undefined))


class Metered:
    """An iterable each of whose items costs a step: what every loop iterates."""

    __slots__ = ("inner",)

    def __init__(self, inner: Any):
        self.inner = inner

    def __iter__(self) -> Iterator[Any]:
        for item in self.inner:
            _spend(0)
            yield item

    def __len__(self) -> int:
        return len(self.inner)


METERED = "__metered"  # the filter every loop's iterable goes through (inserted by the code generator)


class _CodeGenerator(CodeGenerator):
    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        for loop in node.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, METERED, [], [], None, None, lineno=loop.lineno)
        super().visit_Template(node, frame)

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        escape = "context.eval_ctx.autoescape" if frame.eval_ctx.volatile else str(frame.eval_ctx.autoescape)
        self.write("environment.join((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(f"), {escape})")

    @optimizeconst
    def visit_Compare(self, node: nodes.Compare, frame: Frame) -> None:
        self.write("environment.compare(")
        self.visit(node.expr, frame)
        for op in node.ops:
            self.write(f", {op.op!r}, ")
            self.visit(op.expr, frame)
        self.write(")")

    @optimizeconst
    def visit_Getitem(self, node: nodes.Getitem, frame: Frame) -> None:
        if not isinstance(node.arg, nodes.Slice):
            return super().visit_Getitem(node, frame)
        self.write("environment.getitem(")
        self.visit(node.node, frame)
        self.write(", slice(")
        for part in (node.arg.start, node.arg.stop, node.arg.step):
            if part is None:
                self.write("None")
            else:
                self.visit(part, frame)
            self.write(", ")
        self.write("))")
        return None

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self.write("environment.mapping((")
        for item in node.items:
            self.write("(")
            self.visit(item.key, frame)
            self.write(", ")
            self.visit(item.value, frame)
            self.write("), ")
        self.write("))")


def _metered_filter(name: str, f: Any) -> Any:
    skip = 1 if _PassArg.from_obj(f) is not None else 0  # the context, eval context or environment

    @functools.wraps(f)
    def run(*args: Any, **kwargs: Any) -> Any:
        if len(args) > skip and name not in costs.CONSTANT_FILTERS and _lazy(args[skip]):
            args = (*args[:skip], list(Metered(args[skip])), *args[skip + 1 :])
        value = args[skip] if len(args) > skip else None
        _spend(*costs.filter_cost(name, value, args[skip + 1 :], kwargs, _sizes()))
        result = f(*args, **kwargs)
        return Metered(result) if isinstance(result, Iterator) else result

    return run


def _metered_test(name: str, f: Any) -> Any:
    skip = 1 if _PassArg.from_obj(f) is not None else 0

    @functools.wraps(f)
    def run(*args: Any, **kwargs: Any) -> Any:
        value = args[skip] if len(args) > skip else None
        _spend(costs.test_cost(name, value, args[skip + 1 :], _sizes()))
        return f(*args, **kwargs)

    return run


def _finalize(value: Any) -> Any:
    """Every `{{ ... }}` before it is printed: printing a container copies all it holds."""
    if not isinstance(value, str):
        size = _sizes().size(value)
        _spend(size, size)
    return value


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, metered: render templates with `render` (below)."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})
    code_generator_class = _CodeGenerator

    def __init__(self, filters: dict[str, Any] | None = None, globals: dict[str, Any] | None = None, **options: Any):
        super().__init__(finalize=_finalize, **options)
        self.filters = {n: _metered_filter(n, f) for n, f in {**self.filters, **(filters or {})}.items()}
        self.tests = {n: _metered_test(n, f) for n, f in self.tests.items()}
        self.filters[METERED] = lambda iterable: iterable if isinstance(iterable, Metered) else Metered(iterable)
        self.globals.update(globals or {})

    def getattr(self, obj: Any, attribute: str) -> Any:
        _spend(0)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        n = len(obj) if isinstance(argument, slice) and hasattr(obj, "__len__") else 0
        _spend(n, n)  # a slice copies at most the whole
        return super().getitem(obj, argument)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        target = getattr(obj, "__wrapped__", obj)
        if getattr(target, "__name__", "") == "join" and isinstance(getattr(target, "__self__", None), str) and args:
            args = (list(Metered(args[0])), *args[1:])  # its size is known once it is a list
        plain = {k: v for k, v in kwargs.items() if k not in ("_loop_vars", "_block_vars")}
        _spend(*costs.call(obj, args, plain, _sizes()))
        if isinstance(obj, LoopContext) and args:  # a recursive loop's next level
            args = (Metered(args[0]), *args[1:])
        return super().call(context, obj, *args, **kwargs)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _spend(*costs.binop(operator, left, right, _sizes()))
        return super().call_binop(context, operator, left, right)

    def compare(self, left: Any, *rest: Any) -> Any:
        sizes = _sizes()
        result: Any = True
        for i in range(0, len(rest), 2):
            right = rest[i + 1]
            _spend(sizes.size(left) + sizes.size(right))
            result = _COMPARE[rest[i]](left, right)
            if not result:
                return result
            left = right
        return result

    def join(self, parts: tuple[Any, ...], autoescape: bool) -> str:
        sizes = _sizes()
        total = sum(sizes.size(p) for p in parts)
        _spend(total, total)
        return markup_join(parts) if autoescape else str_join(parts)

    def concat(self, parts: Iterable[str]) -> str:
        """A macro's or a block's output."""
        pieces = list(parts)
        total = sum(len(p) for p in pieces)
        _spend(total, total)
        return "".join(pieces)

    def mapping(self, pairs: tuple[tuple[Any, Any], ...]) -> dict[Any, Any]:
        sizes = _sizes()
        _spend(sum(sizes.size(k) for k, _ in pairs))  # hashing the keys
        return dict(pairs)


def bounded_render(template: Template, variables: dict[str, Any]) -> str:
    """`template` (compiled by a BoundedEnvironment) rendered with `variables`, within bounds
    proportional to their size."""
    sizes = costs.Sizes()
    meter = Meter(sum(sizes.size(v) for v in variables.values()), sizes)
    token = _METER.set(meter)
    try:
        parts, total = [], 0
        for chunk in template.generate(variables):
            total += len(chunk)
            _spend(len(chunk), total)
            parts.append(chunk)
        return "".join(parts)
    finally:
        _METER.reset(token)
