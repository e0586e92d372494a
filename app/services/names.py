"""Names, file names and ids as clients send them, checked in one place before any reaches a
query or a column: a column has a width, and PostgreSQL text holds neither NUL nor a lone
surrogate (a driver error, once a 500, for a string the caller typed).

- A **name** (a model's, a dataset's) and a **file name** are bounded, and hold no control
  characters and no lone surrogates: `check_name` answers 422 naming the field otherwise.
- An **id** is a prefix, `_` and letters or digits (app.tables.new_id makes them), at most
  ID_MAX characters. A string that is not one names no object: the services' lookups answer
  404 without a query (`is_id`); where its kind matters, `check_id` names the field (422).
"""

from __future__ import annotations

import re

from app.errors import Invalid

NAME_MAX = 100  # a model's name (models.name), as a job's (the spec's `name`), whose model it names
FILENAME_MAX = 255  # a file name; a dataset's name, which defaults to its file name (datasets.name)
ID_MAX = 40  # app.tables.ID
_ID = re.compile(r"[a-z]{1,16}_[0-9A-Za-z]{1,64}")
_BAD = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # C0/C1 controls, lone surrogates


def text_problem(value: str, max_chars: int) -> str | None:
    """What makes `value` unfit for a name column of `max_chars`, or None."""
    if len(value) > max_chars:
        return f"is {len(value)} characters long; at most {max_chars} are allowed"
    bad = _BAD.search(value)
    if bad is not None:
        return f"holds U+{ord(bad.group()):04X}: control characters and lone surrogates are not allowed"
    return None


def check_name(value: str, loc: str, max_chars: int = NAME_MAX, what: str = "name") -> str:
    """`value`, or 422 `invalid_request` whose one detail names `loc`."""
    problem = text_problem(value, max_chars)
    if problem is not None:
        raise Invalid(f"{loc}: the {what} {problem}", [{"loc": loc, "message": f"the {what} {problem}"}])
    return value


def is_id(value: str, *kinds: str) -> bool:
    """True for a well-formed id (of one of `kinds`, the prefixes without `_`, when given)."""
    if len(value) > ID_MAX or not _ID.fullmatch(value):
        return False
    return not kinds or value.split("_", 1)[0] in kinds


def check_id(value: str, loc: str, *kinds: str, code: str = "invalid_request") -> str:
    """`value` if it is an id of one of `kinds`, else 422 naming `loc` and the kinds expected."""
    if is_id(value, *kinds):
        return value
    shown = (value if _BAD.search(value) is None else ascii(value)[1:-1])[:60]
    expected = ", ".join(f"`{k}_…`" for k in kinds) or "an id"
    message = f"'{shown}' is not {'one of ' if len(kinds) > 1 else ''}{expected}"
    raise Invalid(f"{loc}: {message}", [{"loc": loc, "message": message}], code=code)
