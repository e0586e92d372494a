"""The Python SDK of Stagecraft: `stagecraft.Client(url, api_key)`.

    import stagecraft
    with stagecraft.Client() as client:                      # STAGECRAFT_URL / STAGECRAFT_API_KEY
        corpus = client.datasets.upload("examples/data/corpus.txt")
        job = client.jobs.create(spec)
        job = client.jobs.wait(job.id, on_event=print)
        print(client.models.generate(job.model_id, "The number 42 is written").text)

This package imports only httpx, pydantic and tenacity: nothing of the service (`app`,
`workers`, `models`), so it installs and imports on its own (sdk/pyproject.toml).
"""

from stagecraft._client import Client
from stagecraft._resources.jobs import WaitTimeout
from stagecraft.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    StagecraftError,
    UnavailableError,
    UnprocessableEntityError,
    UnsupportedMediaTypeError,
)

__version__ = "0.1.0"

__all__ = [
    "APIConnectionError",
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConfigurationError",
    "ConflictError",
    "InternalServerError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "StagecraftError",
    "UnavailableError",
    "UnprocessableEntityError",
    "UnsupportedMediaTypeError",
    "WaitTimeout",
    "__version__",
]
