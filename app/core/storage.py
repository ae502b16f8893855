"""Where inputs and chunk payloads live: a local directory, or an S3-compatible bucket.

Keys are made by the server (`new_key`); client-supplied file names are kept only as metadata.
Both backends answer the same small interface (`Storage`), so the API and the workers share
nothing but Postgres, Redis and the storage: with a bucket (``INGEST_STORAGE_URL=s3://...``)
they may run on different hosts, each with a local directory of its own for temporary copies.
Every input is written through `Storage.writing`, which counts its size and SHA-256 as it
flows and leaves nothing behind when aborted (an over-size upload, a failed download).
"""

import asyncio
import atexit
import contextlib
import functools
import gc
import hashlib
import os
import re
import secrets
import shutil
import tempfile
import time
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import obstore
from obstore.store import S3Store

if TYPE_CHECKING:
    from app.core.config import Settings


def new_key(suffix: str = "") -> str:
    # Two-level fan-out keeps directories small; the key never contains client input
    # beyond a vetted extension.
    token = secrets.token_hex(16)
    ext = suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""
    return f"{token[:2]}/{token}{ext}"


def path_for(storage_dir: Path, key: str) -> Path:
    path = (storage_dir / key).resolve()
    if not path.is_relative_to(storage_dir.resolve()):
        raise ValueError("storage key escapes the storage directory")
    return path


def sanitize_filename(name: str | None, max_length: int = 255) -> str:
    """A display-only version of a client-supplied file name."""
    if not name:
        return "upload"
    name = unicodedata.normalize("NFKC", name).replace("\\", "/").split("/")[-1]
    name = "".join(ch for ch in name if ch.isprintable() and ch not in '\x00<>:"|?*')
    name = name.strip(" .") or "upload"
    if len(name) > max_length:
        stem, dot, ext = name.rpartition(".")
        ext = ext[:16] if dot else ""
        name = (stem or name)[: max_length - len(ext) - 1] + (f".{ext}" if ext else "")
    return name


def extension(name: str) -> str:
    _, dot, ext = name.lower().rpartition(".")
    return f".{ext}" if dot and ext.isalnum() else ""


class TooLarge(Exception):
    """A write went over its limit; what was written is gone."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"over the limit of {limit:,} bytes")
        self.limit = limit


@dataclass(frozen=True)
class Stored:
    key: str
    size: int
    sha256: str


class Writing(ABC):
    """An object being written, counted and hashed as it flows. `finish` makes it whole at
    once (no reader ever sees part of it); `abort` leaves nothing."""

    def __init__(self, key: str, limit: int | None) -> None:
        self.key, self.limit = key, limit
        self.size = 0
        self.stored: Stored | None = None  # once finished
        self._digest = hashlib.sha256()

    async def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.limit is not None and self.size > self.limit:
            raise TooLarge(self.limit)
        self._digest.update(data)
        await self._write(data)

    async def finish(self) -> Stored:
        if self.stored is None:
            await self._finish()
            self.stored = Stored(self.key, self.size, self._digest.hexdigest())
        return self.stored

    @abstractmethod
    async def _write(self, data: bytes) -> None: ...

    @abstractmethod
    async def _finish(self) -> None: ...

    @abstractmethod
    async def abort(self) -> None: ...


class Storage(ABC):
    """Objects by key: inputs (`new_key`) and chunk payloads (``chunks/<run>/...``)."""

    @contextlib.asynccontextmanager
    async def writing(self, key: str, *, limit: int | None = None) -> AsyncIterator[Writing]:
        """Write an object in blocks; an exception (TooLarge included) aborts it."""
        writing = self.open(key, limit)
        try:
            yield writing
        except BaseException:
            await writing.abort()
            raise
        await writing.finish()

    async def write_stream(
        self, key: str, blocks: AsyncIterator[bytes], *, limit: int | None = None
    ) -> Stored:
        async with self.writing(key, limit=limit) as writing:
            async for block in blocks:
                await writing.write(block)
        assert writing.stored is not None
        return writing.stored

    @abstractmethod
    def open(self, key: str, limit: int | None = None) -> Writing:
        """An object to write in blocks: `finish` or `abort` it."""

    @abstractmethod
    async def put(self, key: str, data: bytes) -> None:
        """A small object, written at once (a reader sees all of it or nothing)."""

    @abstractmethod
    async def read(self, key: str) -> bytes:
        """The whole object; FileNotFoundError when there is none."""

    @abstractmethod
    async def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of the object (fewer at its end)."""

    @abstractmethod
    async def size(self, key: str) -> int | None:
        """The object's size, None when there is none."""

    @abstractmethod
    async def delete(self, key: str) -> int | None:
        """Remove an object; its size, or None when there was none."""

    @abstractmethod
    async def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix/``; how many there were."""

    @abstractmethod
    async def prefixes(self, prefix: str) -> list[str]:
        """The names directly under ``prefix/`` that hold objects (e.g. the runs with
        chunk payloads under ``chunks``)."""

    @abstractmethod
    async def check(self) -> None:
        """Raises when the storage cannot be used (the readiness probe)."""

    @abstractmethod
    def local_file(self, key: str) -> contextlib.AbstractAsyncContextManager[Path]:
        """A local file with the object's bytes, for readers that need one (XLSX, a whole
        file's split): the file itself, or a temporary copy removed afterwards."""


class _LocalWriting(Writing):
    def __init__(self, path: Path, key: str, limit: int | None) -> None:
        super().__init__(key, limit)
        self._path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        self._out = self._tmp.open("wb")

    async def _write(self, data: bytes) -> None:
        self._out.write(data)

    async def _finish(self) -> None:
        if not self._out.closed:
            self._out.close()
            os.replace(self._tmp, self._path)

    async def abort(self) -> None:
        self._out.close()
        self._tmp.unlink(missing_ok=True)


class LocalStorage(Storage):
    """A directory (``INGEST_STORAGE_DIR``) that every process of a deployment shares."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return path_for(self.root, key)

    def open(self, key: str, limit: int | None = None) -> Writing:
        return _LocalWriting(self.path(key), key, limit)

    async def put(self, key: str, data: bytes) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    async def read(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        with self.path(key).open("rb") as raw:
            raw.seek(start)
            return raw.read(max(0, end - start))

    async def size(self, key: str) -> int | None:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            return None

    async def delete(self, key: str) -> int | None:
        path = self.path(key)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return None
        return size

    async def delete_prefix(self, prefix: str) -> int:
        folder = self.path(prefix)
        if not folder.is_dir():
            return 0
        count = sum(1 for item in folder.rglob("*") if item.is_file())
        shutil.rmtree(folder, ignore_errors=True)
        return count

    async def prefixes(self, prefix: str) -> list[str]:
        folder = self.path(prefix)
        return sorted(item.name for item in folder.iterdir()) if folder.is_dir() else []

    async def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise PermissionError(f"{self.root} is not a writable directory")

    @contextlib.asynccontextmanager
    async def local_file(self, key: str) -> AsyncIterator[Path]:
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        yield path


class _Aborted(Exception):
    pass


class _ObjectWriting(Writing):
    """A multipart upload (`put_async` over the blocks as they come; parts of 5 MB, a few
    in flight): the blocks wait in a short queue, so memory stays flat whatever the size. An
    exception inside the blocks makes the upload abort its parts."""

    _QUEUED_BLOCKS = 4

    def __init__(self, store: S3Store, key: str, limit: int | None) -> None:
        super().__init__(key, limit)
        self._store = store
        self._queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(
            self._QUEUED_BLOCKS
        )
        self._upload: asyncio.Task[Any] | None = None

    async def _blocks(self) -> AsyncIterator[bytes]:
        while (block := await self._queue.get()) is not None:
            if isinstance(block, BaseException):
                raise block
            yield block

    async def _send(self, item: bytes | BaseException | None) -> None:
        """Queue `item` for the upload, or raise the error it stopped on."""
        if self._upload is None:
            self._upload = asyncio.ensure_future(
                obstore.put_async(self._store, self.key, self._blocks())
            )
        queued = asyncio.ensure_future(self._queue.put(item))
        await asyncio.wait({queued, self._upload}, return_when=asyncio.FIRST_COMPLETED)
        if not queued.done():
            queued.cancel()
            self._upload.result()  # it stopped: its error

    async def _write(self, data: bytes) -> None:
        await self._send(data)

    async def _finish(self) -> None:
        if self._upload is None:
            await obstore.put_async(self._store, self.key, b"")
            return
        await self._send(None)
        await self._upload

    async def abort(self) -> None:
        upload, self._upload = self._upload, None
        if upload is None:
            return
        if not upload.done():
            # The blocks raise: the upload aborts its parts and ends.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.put(_Aborted()), _ABORT_SECONDS)
            await asyncio.wait({upload}, timeout=_ABORT_SECONDS)
            upload.cancel()  # no effect once it ended
        # Its error is the abort's own (or it ended before it).
        await asyncio.gather(upload, return_exceptions=True)


_ABORT_SECONDS = 30
# What a store's runtime is given to wind down at exit.
_SETTLE_SECONDS = 0.2


class ObjectStorage(Storage):
    """An S3-compatible bucket (AWS S3, MinIO, R2): ``s3://bucket/prefix``. The endpoint,
    region and credentials come from ``INGEST_S3_ENDPOINT_URL`` and the usual AWS
    variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``)."""

    def __init__(self, url: str, endpoint: str | None, scratch: Path) -> None:
        # Fail within about a minute when the server is down (obstore retries for 3 by
        # default), rather than hold an upload or a chunk's transaction that long.
        options: dict[str, Any] = {"connect_timeout": "5s"}
        if endpoint and endpoint.startswith("http://"):
            options["allow_http"] = True
        config: dict[str, Any] = {"endpoint": endpoint} if endpoint else {}
        retry: Any = {"max_retries": 5, "retry_timeout": timedelta(seconds=60)}
        self.store = S3Store.from_url(
            url,
            client_options=options,  # type: ignore[arg-type]
            retry_config=retry,
            **config,
        )
        self.url = url
        self._scratch = scratch
        # Dropped before the interpreter finalizes: dropped during it, the store's Rust
        # runtime may touch Python state that is gone, and the process aborts (SIGABRT) as it
        # exits (pyo3-async-runtimes#40).
        atexit.register(self._drop)

    def _drop(self) -> None:
        self.__dict__.pop("store", None)
        gc.collect()
        time.sleep(_SETTLE_SECONDS)  # its runtime's last tasks end meanwhile

    def open(self, key: str, limit: int | None = None) -> Writing:
        return _ObjectWriting(self.store, key, limit)

    async def put(self, key: str, data: bytes) -> None:
        await obstore.put_async(self.store, key, data)

    async def read(self, key: str) -> bytes:
        result = await obstore.get_async(self.store, key)
        return bytes(await result.bytes_async())

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        # One GET: S3 answers the bytes there are of a range that runs past the end.
        try:
            return bytes(await obstore.get_range_async(self.store, key, start=start, end=end))
        except FileNotFoundError:
            raise
        except Exception:
            size = await self.size(key)
            if size is None:
                raise FileNotFoundError(key) from None
            if start >= size:  # a range that starts past the end (416): nothing there
                return b""
            raise

    async def size(self, key: str) -> int | None:
        try:
            meta = await obstore.head_async(self.store, key)
        except FileNotFoundError:
            return None
        return int(meta["size"])

    async def delete(self, key: str) -> int | None:
        size = await self.size(key)
        if size is not None:
            await obstore.delete_async(self.store, key)
        return size

    async def delete_prefix(self, prefix: str) -> int:
        keys = [meta["path"] for batch in obstore.list(self.store, prefix=prefix) for meta in batch]
        for start in range(0, len(keys), 1000):
            await obstore.delete_async(self.store, keys[start : start + 1000])
        return len(keys)

    async def prefixes(self, prefix: str) -> list[str]:
        listed = await obstore.list_with_delimiter_async(self.store, prefix=prefix)
        return sorted(name.rstrip("/").rsplit("/", 1)[-1] for name in listed["common_prefixes"])

    async def check(self) -> None:
        await obstore.list_with_delimiter_async(self.store, prefix="chunks")  # the bucket is there

    @contextlib.asynccontextmanager
    async def local_file(self, key: str) -> AsyncIterator[Path]:
        self._scratch.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=self._scratch, suffix=Path(key).suffix)
        path = Path(name)
        try:
            with os.fdopen(handle, "wb") as out:
                result = await obstore.get_async(self.store, key)
                async for block in result.stream():
                    out.write(block)
            yield path
        finally:
            path.unlink(missing_ok=True)  # noqa: ASYNC240 (a local file: no wait worth a thread)


@functools.cache
def _storage(url: str | None, endpoint: str | None, root: Path) -> Storage:
    if url is None:
        return LocalStorage(root)
    return ObjectStorage(url, endpoint, root / "scratch")


def storage_of(settings: "Settings") -> Storage:
    """The configured storage (one per process and configuration)."""
    return _storage(settings.storage_url, settings.s3_endpoint_url, settings.storage_dir)
