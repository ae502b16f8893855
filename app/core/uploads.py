"""Streaming multipart upload: the file part goes straight to storage (a local file, or a
multipart upload to a bucket), counted as it flows, so an over-size upload is refused
mid-stream (413) and leaves nothing behind."""

from dataclasses import dataclass, field

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from app.core.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from app.core.storage import Storage, Writing, extension, new_key, sanitize_filename
from app.pipeline.readers.base import SNIFF_BYTES

MAX_FIELD_BYTES = 64 * 1024


@dataclass
class Upload:
    key: str | None = None
    filename: str | None = None
    size: int = 0
    sha256: str = ""
    head: bytes = b""  # the file's first bytes, to tell its format
    fields: dict[str, str] = field(default_factory=dict)

    async def discard(self, storage: Storage) -> None:
        if self.key is not None:
            await storage.delete(self.key)


class _Receiver:
    """Callbacks for python-multipart's push parser: one file part to storage, small fields
    kept. The parser is synchronous: the file's bytes wait in `pending` for `drain`."""

    def __init__(self, storage: Storage, max_bytes: int, file_field: str):
        self.storage = storage
        self.max_bytes = max_bytes
        self.file_field = file_field
        self.upload = Upload()
        self.headers: dict[bytes, bytes] = {}
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.name = ""
        self.receiving = False  # inside the file part
        self.ended = False  # the file part is complete
        self.pending = bytearray()
        self.out: Writing | None = None
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
            self.receiving = True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self.receiving:
            self.buffer.extend(data[start:end])
            if len(self.buffer) > MAX_FIELD_BYTES:
                raise PayloadTooLarge("A form field is too large.")
            return
        self.upload.size += end - start
        if self.upload.size > self.max_bytes:
            raise PayloadTooLarge(
                f"The file is larger than the {self.max_bytes // 2**20} MB limit."
            )
        self.pending.extend(data[start:end])

    def on_part_end(self) -> None:
        if self.receiving:
            self.receiving, self.ended = False, True
        elif self.name:
            self.upload.fields[self.name] = self.buffer.decode("utf-8", "replace")

    async def drain(self) -> None:
        """Write what the parser gave of the file; finish it once its part ended."""
        upload = self.upload
        if upload.key is None or (self.out is None and self.ended and upload.sha256):
            return
        if self.out is None:
            self.out = self.storage.open(upload.key)
        if self.pending:
            if len(upload.head) < SNIFF_BYTES:
                upload.head += bytes(self.pending[: SNIFF_BYTES - len(upload.head)])
            await self.out.write(bytes(self.pending))
            self.pending.clear()
        if self.ended:
            stored = await self.out.finish()
            upload.sha256, self.out = stored.sha256, None

    async def abort(self) -> None:
        if self.out is not None:
            await self.out.abort()
            self.out = None
        elif self.upload.sha256:
            await self.upload.discard(self.storage)


async def receive_upload(
    request: Request, storage: Storage, max_bytes: int, file_field: str = "file"
) -> Upload:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise UnsupportedMediaType("Send the file as multipart/form-data with a 'file' field.")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + MAX_FIELD_BYTES:
        raise PayloadTooLarge(f"The file is larger than the {max_bytes // 2**20} MB limit.")

    receiver = _Receiver(storage, max_bytes, file_field)
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
            await receiver.drain()
        parser.finalize()
        await receiver.drain()
    except PayloadTooLarge:
        await receiver.abort()
        raise
    except BaseException as exc:
        await receiver.abort()
        if not isinstance(exc, Exception):
            raise  # a cancelled request: nothing to say
        raise BadRequest(f"The multipart body could not be read: {exc}") from exc
    if upload.key is None or not receiver.ended:
        await receiver.abort()
        message = f"The {file_field} field is required."
        raise ValidationFailed(message, errors={file_field: [message]})
    return upload
