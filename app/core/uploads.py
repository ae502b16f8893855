"""Streaming multipart upload: the file part goes straight to storage, counted as it flows, so
an over-size upload is refused mid-stream (413) and leaves nothing behind."""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from app.core.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from app.core.storage import extension, new_key, path_for, remove_quietly, sanitize_filename

MAX_FIELD_BYTES = 64 * 1024


@dataclass
class Upload:
    key: str | None = None
    path: Path | None = None
    filename: str | None = None
    size: int = 0
    sha256: str = ""
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        if self.path is not None:
            remove_quietly(self.path)


class _Receiver:
    """Callbacks for python-multipart's push parser: one file part to disk, small fields kept."""

    def __init__(self, storage_dir: Path, max_bytes: int, file_field: str):
        self.storage_dir = storage_dir
        self.max_bytes = max_bytes
        self.file_field = file_field
        self.upload = Upload()
        self.digest = hashlib.sha256()
        self.headers: dict[bytes, bytes] = {}
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.name = ""
        self.out: BinaryIO | None = None
        self.buffer = bytearray()

    def on_part_begin(self) -> None:
        self.headers, self.name, self.buffer = {}, "", bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field.extend(data[start:end])

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value.extend(data[start:end])

    def on_header_end(self) -> None:
        self.headers[bytes(self.header_field).lower()] = bytes(self.header_value)
        self.header_field.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        _, disposition = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.name = disposition.get(b"name", b"").decode("utf-8", "replace")
        upload = self.upload
        if self.name == self.file_field and b"filename" in disposition and upload.key is None:
            upload.filename = sanitize_filename(disposition[b"filename"].decode("utf-8", "replace"))
            upload.key = new_key(extension(upload.filename))
            upload.path = path_for(self.storage_dir, upload.key)
            upload.path.parent.mkdir(parents=True, exist_ok=True)
            self.out = upload.path.open("wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.out is None:
            self.buffer.extend(data[start:end])
            if len(self.buffer) > MAX_FIELD_BYTES:
                raise PayloadTooLarge("A form field is too large.")
            return
        self.upload.size += end - start
        if self.upload.size > self.max_bytes:
            raise PayloadTooLarge(
                f"The file is larger than the {self.max_bytes // 2**20} MB limit."
            )
        chunk = data[start:end]
        self.digest.update(chunk)
        self.out.write(chunk)

    def on_part_end(self) -> None:
        if self.out is not None:
            self.close()
        elif self.name:
            self.upload.fields[self.name] = self.buffer.decode("utf-8", "replace")

    def close(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None


async def receive_upload(
    request: Request, storage_dir: Path, max_bytes: int, file_field: str = "file"
) -> Upload:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise UnsupportedMediaType("Send the file as multipart/form-data with a 'file' field.")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + MAX_FIELD_BYTES:
        raise PayloadTooLarge(f"The file is larger than the {max_bytes // 2**20} MB limit.")

    receiver = _Receiver(storage_dir, max_bytes, file_field)
    callbacks = {
        name: getattr(receiver, name)
        for name in (
            "on_part_begin",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
            "on_part_data",
            "on_part_end",
        )
    }
    parser = MultipartParser(params[b"boundary"], callbacks=callbacks)  # type: ignore[arg-type]
    upload = receiver.upload
    try:
        async for block in request.stream():
            parser.write(block)
        parser.finalize()
    except PayloadTooLarge:
        receiver.close()
        upload.discard()
        raise
    except Exception as exc:
        receiver.close()
        upload.discard()
        raise BadRequest(f"The multipart body could not be read: {exc}") from exc
    receiver.close()
    if upload.path is None:
        message = f"The {file_field} field is required."
        raise ValidationFailed(message, errors={file_field: [message]})
    upload.sha256 = receiver.digest.hexdigest()
    return upload
