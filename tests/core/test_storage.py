"""The storage interface, on both backends: a local directory and a real S3 protocol server on
loopback (moto). Writes are counted and hashed as they flow, whole or absent; byte ranges of a
CSV input parse to exactly the rows of the whole file."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.storage import LocalStorage, ObjectStorage, Storage, TooLarge
from app.pipeline import ranges
from app.pipeline.readers import csv_reader
from tests.objects import S3
from tests.pipeline.test_readers import TRICKY_CSV, read, write

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_database() -> None:
    """Storage touches no database: the suite's table truncation is not needed."""


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Storage, S3 | None]:
    if request.param == "local":
        return LocalStorage(tmp_path / "storage"), None
    bucket: S3 = request.getfixturevalue("s3")
    return ObjectStorage(bucket.url, bucket.endpoint, tmp_path / "scratch"), bucket


def listed(storage: Storage, bucket: S3 | None) -> list[str]:
    """Every object the storage holds, temporary files included."""
    if bucket is not None:
        return bucket.keys()
    assert isinstance(storage, LocalStorage)
    root = storage.root
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_a_written_object_is_counted_hashed_and_read_back(
    backend: tuple[Storage, S3 | None],
) -> None:
    storage, bucket = backend
    data = bytes(range(256)) * 40_000  # 10 MB: a multipart upload on S3
    async with storage.writing("ab/input.csv") as out:
        for start in range(0, len(data), 1 << 20):
            await out.write(data[start : start + (1 << 20)])
    assert out.stored is not None
    assert (out.stored.size, out.stored.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert await storage.size("ab/input.csv") == len(data)
    assert await storage.read("ab/input.csv") == data
    assert await storage.read_range("ab/input.csv", 5, 300) == data[5:300]
    assert await storage.read_range("ab/input.csv", len(data) - 3, len(data) + 50) == data[-3:]
    async with storage.local_file("ab/input.csv") as path:
        assert path.read_bytes() == data
    assert listed(storage, bucket) == ["ab/input.csv"]
    assert await storage.delete("ab/input.csv") == len(data)
    assert await storage.delete("ab/input.csv") is None
    assert await storage.size("ab/input.csv") is None
    with pytest.raises(FileNotFoundError):
        await storage.read("ab/input.csv")


async def test_an_aborted_or_oversize_write_leaves_nothing(
    backend: tuple[Storage, S3 | None],
) -> None:
    storage, bucket = backend
    block = b"x" * (4 << 20)  # past 10 MB, the S3 writer has begun a multipart upload
    with pytest.raises(TooLarge):
        async with storage.writing("ab/big.csv", limit=14 << 20) as out:
            for _ in range(5):  # 20 MB: over the limit on the fourth block
                await out.write(block)
    with pytest.raises(RuntimeError):
        async with storage.writing("ab/broken.csv") as out:
            await out.write(block * 3)
            raise RuntimeError("the client went away")
    assert listed(storage, bucket) == []
    if bucket is not None:
        assert bucket.uploads_in_progress() == []  # the parts were aborted too


async def test_small_objects_prefixes_and_prefix_deletion(
    backend: tuple[Storage, S3 | None],
) -> None:
    storage, bucket = backend
    for run in (7, 12):
        for index in range(3):
            await storage.put(f"chunks/{run}/{index}.json", b"[]")
    await storage.put("chunks/7/split.state", b"state")
    await storage.put("cd/kept.csv", b"a\n")
    assert await storage.prefixes("chunks") == ["12", "7"]
    assert await storage.read("chunks/7/split.state") == b"state"
    assert await storage.delete_prefix("chunks/7") == 4
    assert await storage.delete_prefix("chunks/99") == 0
    assert listed(storage, bucket) == ["cd/kept.csv", *(f"chunks/12/{i}.json" for i in range(3))]


@pytest.mark.parametrize("name", sorted(TRICKY_CSV))
async def test_byte_ranges_read_from_storage_give_the_rows_of_the_whole_file(
    backend: tuple[Storage, S3 | None], tmp_path: Path, name: str
) -> None:
    """What the chunk jobs read: each range, fetched and parsed alone, gives the rows a single
    pass over the file gives, errors (and the line of a quote left open) included."""
    storage, _ = backend
    path = write(tmp_path, "data.csv", TRICKY_CSV[name])
    columns, single = read(path, "csv")
    with csv_reader.open_csv(path) as table:
        start = table.position
        assert start is not None
        ends = [end for end, _ in table.row_ends()]
    key = f"ab/{name}.csv"
    await storage.put(key, path.read_bytes())
    size = path.stat().st_size
    pieced = []
    for first in range(0, len(ends), 2):
        end = ends[min(first + 2, len(ends)) - 1]
        rows = await ranges.read_range(storage, key, columns, start, end, size=size)
        pieced.extend(
            (cells if isinstance(cells, dict) else dict(zip(columns, cells, strict=True)), error)
            for cells, error in rows
        )
        start = end
    assert pieced == single


EXIT_SCRIPT = """
import asyncio, sys
from pathlib import Path
from app.core.storage import ObjectStorage

async def main() -> None:
    bucket = ObjectStorage(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
    async with bucket.writing("ab/x.csv") as out:
        await out.write(b"x" * (11 << 20))
    await bucket.read_range("ab/x.csv", 0, 100)
    gone = ObjectStorage("s3://nowhere/x", "http://127.0.0.1:1", Path(sys.argv[3]))
    try:
        await gone.read("k")
    except Exception:
        pass

asyncio.run(main())
"""


def test_a_process_that_used_a_bucket_exits_cleanly(s3: S3, tmp_path: Path) -> None:
    """obstore's runtime, dropped while the interpreter finalizes, could abort the process
    (SIGABRT) as it exited, about one run in five after a failed request: a worker or `ingest
    prune` would end with 134. The storage drops its stores before that. (A race: eight runs
    catch its return five times in six.)"""
    for _ in range(8):
        done = subprocess.run(
            [sys.executable, "-c", EXIT_SCRIPT, s3.url, s3.endpoint, str(tmp_path)],
            cwd=ROOT,
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
