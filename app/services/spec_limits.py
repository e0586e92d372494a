"""What a job spec may ask of this service beyond being well formed: strings a database can
store (no NUL characters, which PostgreSQL text and JSON refuse), and the resource limits of
the settings (parameters, tokens, steps, checkpoints), as 422 `resource_limit_exceeded`."""

from __future__ import annotations

from typing import Any

from app.config import Settings
from app.errors import Invalid
from app.services.estimates import Estimates
from models.spec import JobSpec


def nul_errors(raw: Any) -> list[dict[str, str]]:
    """Every string (key or value) in a parsed JSON value that holds a NUL, by dotted path."""
    errors: list[dict[str, str]] = []
    stack: list[tuple[Any, str]] = [(raw, "")]
    while stack:
        value, loc = stack.pop()
        if isinstance(value, dict):
            for k, v in value.items():
                path = f"{loc}.{k}" if loc else str(k)
                if "\x00" in str(k):
                    errors.append({"loc": path.replace("\x00", "\\u0000"), "message": "a key holds a NUL character"})
                    continue
                stack.append((v, path))
        elif isinstance(value, list):
            stack.extend((v, f"{loc}.{i}" if loc else str(i)) for i, v in enumerate(value))
        elif isinstance(value, str) and "\x00" in value:
            errors.append({"loc": loc or "(root)", "message": "strings may not hold NUL (\\u0000) characters"})
    return sorted(errors, key=lambda e: e["loc"])


def check_resources(settings: Settings, spec: JobSpec, est: Estimates) -> None:
    """422 `resource_limit_exceeded` naming every field over a limit of the settings."""
    errors: list[dict[str, str]] = []

    def over(loc: str, value: float, limit: float, what: str, setting: str) -> None:
        if value > limit:
            errors.append({"loc": loc, "message": f"{what} is {value:.4g}; this service allows at most "
                           f"{limit:.4g} (setting {setting})"})  # fmt: skip

    over("model", est.parameters, settings.max_job_parameters, "the model's parameter count", "MAX_JOB_PARAMETERS")
    over("stages", est.tokens, settings.max_job_tokens, "the tokens the training reads", "MAX_JOB_TOKENS")
    over("stages", est.total_steps, settings.max_job_steps, "the total of training steps", "MAX_JOB_STEPS")
    checkpoints = est.total_steps // spec.checkpointing.every_steps
    over(
        "checkpointing.every_steps", checkpoints, settings.max_job_checkpoints,
        "the number of checkpoints written", "MAX_JOB_CHECKPOINTS",
    )  # fmt: skip
    if errors:
        raise Invalid(f"the job asks for more than this service allows: {errors[0]['message']}", errors,
                      code="resource_limit_exceeded")  # fmt: skip
