"""Where the client finds the service's URL and an API key.

Precedence, first found wins:
  url:     the `url` argument, then $STAGECRAFT_URL, then http://127.0.0.1:8000
  api_key: the `api_key` argument, then $STAGECRAFT_API_KEY, then the key file that
           `stagecraft up` writes on its first start: DATA_DIR/api_key, where DATA_DIR is
           $STAGECRAFT_DATA_DIR or ~/.stagecraft (the service's own default).
"""

from __future__ import annotations

import os
from pathlib import Path

from stagecraft.errors import ConfigurationError

DEFAULT_URL = "http://127.0.0.1:8000"
KEY_FILE = "api_key"


def data_dir() -> Path:
    return Path(os.environ.get("STAGECRAFT_DATA_DIR") or Path.home() / ".stagecraft").expanduser()


def resolve_url(url: str | None) -> str:
    return (url or os.environ.get("STAGECRAFT_URL") or DEFAULT_URL).rstrip("/")


def resolve_api_key(api_key: str | None) -> str:
    if api_key:
        return api_key
    if os.environ.get("STAGECRAFT_API_KEY"):
        return os.environ["STAGECRAFT_API_KEY"]
    key_file = data_dir() / KEY_FILE
    try:
        key = key_file.read_text(encoding="utf-8").strip()
    except OSError:
        key = ""
    if key:
        return key
    raise ConfigurationError(
        "no API key: pass api_key=..., set STAGECRAFT_API_KEY, or start `stagecraft up` "
        f"(it writes one to {key_file}); `stagecraft keys create --tenant NAME` makes more"
    )
