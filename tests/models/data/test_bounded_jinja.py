"""Chat templates from untrusted models render within bounds (models.data.bounded_jinja): every
kind of runaway template is refused with a ChatTemplateError naming the bound it hit, before it
has built anything large; what the metering routes through the environment renders exactly as
jinja2's own sandbox renders it; the bounds grow with the conversation, so long legitimate
chats still render."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from models.data.chat import ChatFormat, render, render_prompt
from models.errors import ChatTemplateError

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QWEN25 = (Path(__file__).parent / "qwen25_chat_template.jinja").read_text(encoding="utf-8")
DAG = (  # two lists nested 60 deep, each level holding the one below twice: 2**60 leaves, 61 objects
    "{% set ns = namespace(a=[1], b=[1]) %}{% for i in range(60) %}"
    "{% set ns.a = [ns.a, ns.a] %}{% set ns.b = [ns.b, ns.b] %}{% endfor %}"
)
STEPS, WORK, SIZE = "steps", "units of work", "characters or elements"
HOSTILE = {
    "range 10**10": ("{% for i in range(10**10) %}x{% endfor %}", "Range too big"),
    "nested loops": ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}", STEPS),
    "loops over a list": (
        "{% set r = range(1000)|list %}{% for a in r %}{% for b in r %}{% for c in r %}{% endfor %}{% endfor %}"
        "{% endfor %}",
        STEPS,
    ),
    "exponential macro": (
        "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
        STEPS,
    ),
    "endless recursion": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "RecursionError"),
    "repetition": ("{{ 'a' * 10**9 }}", SIZE),
    "doubling with ~": (
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
        SIZE,
    ),
    "doubling with +": (
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        SIZE,
    ),
    "comparing DAGs": (DAG + "{{ ns.a == ns.b }}", WORK),
    "printing a DAG": (DAG + "{{ ns.a }}", SIZE),
    "a DAG as JSON": (DAG + "{{ ns.a|tojson }}", SIZE),
    "a DAG in a list": (DAG + "{{ ns.a in [ns.b] }}", WORK),
    "a DAG as a key": (DAG + "{{ {(ns.a, ns.b): 1} }}", WORK),
    "a huge power": ("{% set n = messages|length %}{{ 10 ** (10 ** (n + 8)) }}", "bits"),
    "replace": ("{{ ('a' * 60000)|replace('', 'bbbb') }}", SIZE),
    "str.replace": ("{{ ('a' * 60000).replace('a', 'bbbbbbbb') }}", SIZE),
    "format width": ("{{ '{:>999999999}'.format(1) }}", SIZE),
    "percent width": ("{{ '%999999999d' % 1 }}", SIZE),
    "center": ("{{ 'x'.center(10**9) }}", SIZE),
    "join": ("{{ (['a' * 60000] * 1000)|join }}", SIZE),
    "str.join": ("{{ ''.join(['a' * 60000] * 1000) }}", SIZE),
    "expandtabs": ("{{ ('\t' * 60000).expandtabs(1000) }}", SIZE),
    "indent": ("{{ ('\n' * 60000)|indent(1000) }}", SIZE),
    "batch": ("{{ [1]|batch(10**9, 'x')|list }}", SIZE),
    "lipsum": ("{{ lipsum(10**6) }}", SIZE),
    "sum of lists": ("{{ ([[1]] * 60000)|sum(start=[]) }}", SIZE),
    "output in a loop": ("{% for i in range(99999) %}{{ messages|tojson }}{% endfor %}", SIZE),
    "slices in a loop": ("{% set s = 'a' * 60000 %}{% for i in range(99999) %}{% set t = s[1:] %}{% endfor %}", WORK),
    "division by zero": ("{{ 1 / 0 }}", "ZeroDivisionError"),
}
CHAT = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("name", HOSTILE)
def test_runaway_templates_are_refused_before_they_grow(name: str) -> None:
    template, bound = HOSTILE[name]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ChatTemplateError, match=bound):
        render_prompt(CHAT, ChatFormat(template))
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    assert grown_mib < 200, f"{name}: the process grew by {grown_mib:.0f} MiB before the refusal"


def test_the_bounds_are_counts_not_times() -> None:
    """The same template and chat hit the same bound at the same count, however long it took."""
    template = HOSTILE["nested loops"][0]
    messages = set()
    for _ in range(3):
        with pytest.raises(ChatTemplateError) as caught:
            render_prompt(CHAT, ChatFormat(template))
        messages.add(str(caught.value))
    assert len(messages) == 1, messages


def test_a_refusal_costs_about_as_much_as_a_long_legitimate_render() -> None:
    """The worst refusal takes no more than a few hundred legitimate renders (generous)."""
    chat = ChatFormat(QWEN25)
    messages = [{"role": "user", "content": "What is the capital of France? " * 4}] * 8
    start = time.perf_counter()
    for _ in range(20):
        render(messages, chat, add_generation_prompt=True)
    legit = (time.perf_counter() - start) / 20
    worst = 0.0
    for template, _ in HOSTILE.values():
        start = time.perf_counter()
        with pytest.raises(ChatTemplateError):
            render_prompt(CHAT, ChatFormat(template))
        worst = max(worst, time.perf_counter() - start)
    print(f"\nlegitimate render {legit * 1e3:.2f} ms, slowest refusal {worst * 1e3:.1f} ms")
    assert worst < 500 * legit + 0.5


def test_a_long_legitimate_chat_with_tools_renders() -> None:
    """The bounds grow with the input: 2,000 turns and 50 tools through Qwen2.5's template."""
    tools = [
        {"type": "function", "function": {"name": f"f{i}", "description": "d" * 200, "parameters": {"type": "object"}}}
        for i in range(50)
    ]
    turns = [{"role": r, "content": f"turn {i} " * 30} for i in range(1000) for r in ("user", "assistant")]
    text = render(turns, ChatFormat(QWEN25), add_generation_prompt=True, tools=tools)
    assert text.count("<|im_start|>") == 2002 and '"name": "f49"' in text


SEMANTICS = [  # each operation the code generator sends through the environment, and the loop forms
    "{{ 1 < 2 < 3 }}{{ 3 > 2 > 2 }}{{ 'a' in 'cat' }}{{ 'x' not in ['y'] }}{{ [1, 2] == [1, 2] }}",
    "{{ messages[1:] }}{{ messages[::-1][0]['role'] }}{{ 'abcdef'[1:4] }}{{ 'abcdef'[::2] }}{{ [1,2,3][:-1] }}",
    "{{ {'a': 1, 'b': [2]} }}{{ {'a': 1}['a'] }}{% set d = {} %}{{ d }}",
    "{{ 'a' ~ 1 ~ none ~ [2] }}{% set x = 'q' %}{{ x ~ x }}",
    "{% for m in messages %}{{ loop.index }}/{{ loop.length }}{{ '!' if loop.last }}{% endfor %}",
    "{% for m in messages if m.role == 'user' %}{{ m.content }}{% else %}none{% endfor %}",
    "{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}",
    "{% for x in [[1, [2]], [3]] recursive %}[{% if x is iterable %}{{ loop(x) }}{% else %}{{ x }}{% endif %}]"
    "{% endfor %}",
    "{{ messages|map(attribute='role')|join(',') }}{{ messages|selectattr('role', 'eq', 'user')|list|length }}",
    "{% macro m(a, b=2) %}{{ a }}{{ b }}{{ caller() if caller }}{% endmacro %}{{ m(1) }}"
    "{% call m(3) %}inner{% endcall %}",
    "{% filter upper %}shout {{ messages[0].content }}{% endfilter %}{% set block %}b{{ 1 }}{% endset %}{{ block }}",
    "{% set ns = namespace(n=0) %}{% for i in range(5) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}",
    "{{ '%s-%d' % ('a', 3) }}{{ '{}:{}'.format('x', 2) }}{{ 2 ** 10 }}{{ [0] * 3 }}{{ 'ab' * 2 }}",
    "{{ messages|tojson }}{{ messages[0]|dictsort }}{{ [3, 1, 2]|sort }}{{ 'A b'|lower|title }}",
]


@pytest.mark.parametrize("template", SEMANTICS)
def test_metered_operations_render_as_jinja2_s_sandbox(template: str) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    plain = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    plain.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    expected = plain.from_string(template).render(messages=messages, add_generation_prompt=False)
    ours = render(messages, ChatFormat(template))
    assert ours == expected
