"""Multipart uploads streamed straight to disk, hashed and size-capped on the way.

Starlette's form parser spools a whole upload before the handler runs; this reads the
request stream itself, so a file over the cap is refused (413) as soon as it passes it
and memory stays flat whatever the upload size.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import Invalid, PayloadTooLarge, ServiceError, UnsupportedMediaType

MAX_NAME = 255
FORM_OVERHEAD = 64 * 1024  # multipart headers and small fields besides the file


@dataclass
class Upload:
    path: Path
    filename: str = ""
    name: str = ""
    size: int = 0
    sha256: str = ""
    purpose: str = ""  # the `purpose` part OpenAI's files API sends (routes/files.py)
    base: str = ""  # the `base` part of a LoRA adapter upload: the model it adapts (routes/models.py)


@dataclass
class _Parts:
    """Parser callbacks: the `file` part goes to disk, a `name` part to memory, others nowhere."""

    upload: Upload
    max_bytes: int
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    headers: dict[bytes, bytes] = field(default_factory=dict)
    current: str | None = None
    file: IO[bytes] | None = None
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    name_buf: bytearray = field(default_factory=bytearray)
    purpose_buf: bytearray = field(default_factory=bytearray)
    base_buf: bytearray = field(default_factory=bytearray)
    seen_file: bool = False

    def on_part_begin(self) -> None:
        self.headers.clear()
        self.current = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[bytes(self.header_field).lower()] = bytes(self.header_value)
        self.header_field.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.current = params.get(b"name", b"").decode("utf-8", "replace")
        if self.current == "file" and not self.seen_file:
            self.seen_file = True
            self.upload.filename = Path(params.get(b"filename", b"").decode("utf-8", "replace")).name
            self.file = self.upload.path.open("wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.current == "file" and self.file is not None:
            self.upload.size += len(chunk)
            if self.upload.size > self.max_bytes:
                raise PayloadTooLarge(f"the file is larger than the upload limit of {self.max_bytes} bytes")
            self.file.write(chunk)
            self.hasher.update(chunk)
        elif self.current == "name":
            self.name_buf += chunk
            if len(self.name_buf) > 4 * MAX_NAME:
                raise Invalid("name is too long", [{"loc": "name", "message": f"at most {MAX_NAME} characters"}])
        elif self.current == "purpose" and len(self.purpose_buf) < MAX_NAME:
            self.purpose_buf += chunk
        elif self.current == "base" and len(self.base_buf) < MAX_NAME:
            self.base_buf += chunk

    def on_part_end(self) -> None:
        if self.current == "file" and self.file is not None:
            self.file.close()
            self.file = None
        self.current = None


async def receive_file(request: Request, dest: Path, max_bytes: int) -> Upload:
    """Stream the `file` part of a multipart/form-data request to `dest`."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise UnsupportedMediaType("send the file as multipart/form-data with a `file` part (and optionally `name`)")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + FORM_OVERHEAD:
        raise PayloadTooLarge(f"the upload ({declared} bytes) is larger than the limit of {max_bytes} bytes")
    upload = Upload(dest)
    parts = _Parts(upload, max_bytes)
    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": parts.on_part_begin,
            "on_header_field": parts.on_header_field,
            "on_header_value": parts.on_header_value,
            "on_header_end": parts.on_header_end,
            "on_headers_finished": parts.on_headers_finished,
            "on_part_data": parts.on_part_data,
            "on_part_end": parts.on_part_end,
        },
    )
    try:
        try:
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
        except MultipartParseError as exc:
            raise ServiceError(f"malformed multipart body: {exc}", code="invalid_multipart") from None
    except BaseException:
        if parts.file is not None:
            parts.file.close()
        dest.unlink(missing_ok=True)
        raise
    if not parts.seen_file:
        raise Invalid("no file in the upload", [{"loc": "file", "message": "a `file` part is required"}])
    upload.filename = upload.filename.replace("\x00", "")  # PostgreSQL text cannot hold NUL
    upload.name = parts.name_buf.decode("utf-8", "replace").replace("\x00", "").strip()[:MAX_NAME] or upload.filename
    upload.sha256 = parts.hasher.hexdigest()
    upload.purpose = parts.purpose_buf.decode("utf-8", "replace").strip()
    upload.base = parts.base_buf.decode("utf-8", "replace").replace("\x00", "").strip()
    return upload
