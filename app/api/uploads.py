"""Multipart uploads streamed straight to disk, hashed and size-capped on the way.

Starlette's form parser spools a whole upload before the handler runs; this reads the
request stream itself, so a file over the cap is refused (413) as soon as it passes it
and memory stays flat whatever the upload size. The request was authenticated before a byte
of it was read (app.api.body); the parsing, hashing and writing run on a worker thread, a
batch of received chunks at a time, never on the event loop. The file name and `name` are
checked as app.services.names says (422 naming `file` or `name`), and a failed upload leaves
no file behind.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import anyio.to_thread
from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import Invalid, PayloadTooLarge, ServiceError, UnsupportedMediaType
from app.services.names import FILENAME_MAX, check_name

MAX_NAME = FILENAME_MAX  # what a small part (name, purpose, base) may hold before it is refused
FORM_OVERHEAD = 64 * 1024  # multipart headers and small fields besides the file
PARSE_BATCH = 1 << 20  # bytes received before they are handed to the parser's thread


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
            check_name(self.upload.filename, "file", FILENAME_MAX, "file name")  # before its data is read
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
            if len(self.name_buf) > 4 * MAX_NAME:  # bytes: UTF-8 takes up to 4 a character
                message = f"the name is longer than {MAX_NAME} characters"
                raise Invalid(message, [{"loc": "name", "message": message}])
        elif self.current == "purpose" and len(self.purpose_buf) < MAX_NAME:
            self.purpose_buf += chunk
        elif self.current == "base" and len(self.base_buf) < MAX_NAME:
            self.base_buf += chunk

    def on_part_end(self) -> None:
        if self.current == "file" and self.file is not None:
            self.file.close()
            self.file = None
        self.current = None


async def receive_file(request: Request, dest: Path, max_bytes: int, name_max: int = FILENAME_MAX) -> Upload:
    """Stream the `file` part of a multipart/form-data request to `dest`; `name` (default the
    file name, cut to `name_max`) at most `name_max` characters."""
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
            batch: list[bytes] = []
            size = total = 0
            async for chunk in request.stream():
                batch.append(chunk)
                size, total = size + len(chunk), total + len(chunk)
                if total > max_bytes + FORM_OVERHEAD:  # the whole body, whatever its parts
                    raise PayloadTooLarge(f"the upload is larger than the limit of {max_bytes} bytes")
                if size >= PARSE_BATCH:
                    await anyio.to_thread.run_sync(parser.write, b"".join(batch))
                    batch, size = [], 0
            await anyio.to_thread.run_sync(_finish, parser, b"".join(batch))
        except MultipartParseError as exc:
            raise ServiceError(f"malformed multipart body: {exc}", code="invalid_multipart") from None
        if not parts.seen_file:
            raise Invalid("no file in the upload", [{"loc": "file", "message": "a `file` part is required"}])
        check_name(upload.filename, "file", FILENAME_MAX, "file name")
        name = check_name(parts.name_buf.decode("utf-8", "replace").strip(), "name", name_max)
        upload.name = name or upload.filename[:name_max]
        upload.sha256 = parts.hasher.hexdigest()
        upload.purpose = parts.purpose_buf.decode("utf-8", "replace").strip()
        upload.base = parts.base_buf.decode("utf-8", "replace").strip()
    except BaseException:
        if parts.file is not None:
            parts.file.close()
        dest.unlink(missing_ok=True)
        raise
    return upload


def _finish(parser: MultipartParser, rest: bytes) -> None:
    if rest:
        parser.write(rest)
    parser.finalize()
