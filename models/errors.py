"""The errors `models` raises, under one root, so a caller catches one class.

    StagecraftError            code: how a job that hits it fails (docs/api.md, `job.failed`)
    ├── SpecError              a job spec that cannot run; `errors` lists {loc, message}
    ├── DataError              bad data lines; `issues` lists {line, field, reason}
    ├── TooDeep                JSON nested deeper than its bound (also a ValueError)
    ├── Stopped                not a failure: the run was asked to stop and checkpointed at `step`
    └── TrainingError          a run that cannot go on; its code is set per instance
        ├── ArchiveError       an archive member that would land outside its folder
        ├── AdapterError       an adapter folder that cannot be read, or does not fit its model
        ├── ChatTemplateError  a chat template that does not compile, raises, or hides its turns
        └── UnsupportedModel   a model this package cannot represent exactly
            ├── GGUFError      a GGUF file we cannot read exactly (also a ValueError)
            └── HeaderError    a safetensors header that cannot be read (also a ValueError)

The service maps them to its errors in one place (app.errors.from_model_error): a spec error is a 422
`invalid_spec`, bad data a 422 `invalid_dataset`, an unsupported model a 422 `unsupported_model`.
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


class AdapterError(TrainingError):
    """An adapter directory that cannot be read, or that does not fit the model."""

    def __init__(self, message: str):
        super().__init__("user_error", message)


class ChatTemplateError(TrainingError):
    """A chat template that does not compile, raises, or renders turns we cannot find."""

    def __init__(self, message: str):
        super().__init__("user_error", message)


class GGUFError(UnsupportedModel, ValueError):
    """A GGUF file we cannot read exactly: reported as `unsupported_model` (422 / exit 2)."""


class HeaderError(UnsupportedModel, ValueError):
    """A safetensors file whose header cannot be read; the message says why (no path in it)."""


class TooDeep(StagecraftError, ValueError):
    """JSON nested deeper than the bound it was parsed with."""


class Stopped(StagecraftError):
    """The run was asked to stop between two steps and was checkpointed at `step`: not a failure."""

    code = "cancelled"

    def __init__(self, step: int):
        self.step = step
        super().__init__(f"stopped at step {step}")
