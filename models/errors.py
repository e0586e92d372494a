"""The errors `models` raises, under one root, so a caller catches one class.

    StagecraftError            code: how a job that hits it fails (CONTRACT §3 `job.failed`)
    ├── SpecError              a job spec that cannot run; `errors` lists {loc, message}
    ├── DataError              bad data lines; `issues` lists {line, field, reason}
    └── TrainingError          a run that cannot go on; its code is set per instance
        ├── ArchiveError       an archive member that would land outside its folder
        └── UnsupportedModel   a model this package cannot represent exactly

The service maps them to HTTP answers (a spec error is a 422 `invalid_spec`, bad data a 422
`invalid_dataset`, an unsupported model a 422 `unsupported_model`).
"""

from __future__ import annotations

from typing import Any

MAX_REPORTED = 100  # data issues kept on a DataError (the count of all of them is `total`)


class StagecraftError(Exception):
    """The root. `code` is user_error unless a subclass or instance says otherwise."""

    code = "user_error"


class SpecError(StagecraftError, ValueError):
    """A spec that cannot run. `errors` lists {"loc": "stages.1.data", "message": ...}."""

    def __init__(self, errors: list[dict[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{e['loc']}: {e['message']}" for e in errors))


class DataError(StagecraftError, ValueError):
    """Bad data: `issues` lists every {"line", "field", "reason"} found (line 0: whole file)."""

    def __init__(self, source: str, issues: list[dict[str, Any]], total: int | None = None):
        self.source = source
        self.issues = issues[:MAX_REPORTED]
        self.total = total if total is not None else len(issues)
        head = "; ".join(f"line {i['line']}: {i['field']}: {i['reason']}" for i in self.issues[:5])
        more = f" (and {self.total - 5} more)" if self.total > 5 else ""
        super().__init__(f"{source}: {self.total} bad line(s): {head}{more}")


class TrainingError(StagecraftError, RuntimeError):
    """A run that cannot go on. `code` is user_error, system_error or time_limit."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


class ArchiveError(TrainingError):
    def __init__(self, message: str):
        super().__init__("user_error", message)


class UnsupportedModel(TrainingError):
    """A checkpoint we cannot represent exactly (an architecture, a layout, a file format)."""

    def __init__(self, message: str):
        super().__init__("user_error", message)
