"""Errors a run reports to its caller."""


class TrainingError(RuntimeError):
    """A run that cannot go on. `code` is user_error, system_error or time_limit."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


class UnsupportedModel(TrainingError):
    """A checkpoint we cannot represent exactly (an architecture, a layout, a file format)."""

    def __init__(self, message: str):
        super().__init__("user_error", message)
