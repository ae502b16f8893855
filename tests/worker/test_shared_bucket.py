"""A deployment that shares nothing but Postgres, Redis and a bucket: one API process and two
worker processes, each with a local directory of its own, against a real S3 protocol server on
loopback. Upload, split, apply, rows read back from the input, the failed-rows download, retry
and prune all go through the bucket."""

import asyncio
import csv
import io
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core.config import Settings
from app.main import create_app
from tests.cli.harness import Api, outside_env, serving
from tests.conftest import CreateImporter, MakeToken
from tests.factories import USER_FIELDS
from tests.objects import S3
from tests.worker.processes import ROOT, start_worker, wait_for, workers

PREFIX = "/api/v1/ingest"


def env_for(settings: Settings, bucket: S3, storage_dir: Path) -> dict[str, str]:
    return {
        "INGEST_DATABASE_URL": settings.require_database_url(),
        "INGEST_REDIS_URL": settings.require_redis_url(),
        "INGEST_QUEUE_NAME": settings.queue_name,
        "INGEST_STORAGE_DIR": str(storage_dir),
        "INGEST_LOG_LEVEL": "WARNING",
        **bucket.env,
    }


@pytest.fixture
def api(settings: Settings, s3: S3, tmp_path: Path) -> Iterator[Api]:
    env = outside_env(**env_for(settings, s3, tmp_path / "api-disk"))
    with serving(env, tmp_path / "api.log") as server:
        yield server


def users_csv(rows: int) -> str:
    lines = ["Email,Name,Age"]
    for i in range(rows):
        age = "old" if i % 7 == 3 else str(20 + i % 50)  # every seventh row fails
        lines.append(f"user{i}@example.com,User {i},{age}")
    return "\n".join(lines) + "\n"


async def finished(client: httpx.AsyncClient, run_id: int) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        run: dict[str, Any] = (await client.get(f"{PREFIX}/{run_id}")).json()["data"]
        return run if run["status"] not in ("pending", "processing") else None

    result: dict[str, Any] = await wait_for(done, f"run {run_id} to finish", 90)
    return result


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


async def test_api_and_two_workers_share_only_the_bucket(
    settings: Settings,
    s3: S3,
    api: Api,
    make_token: MakeToken,
    tmp_path: Path,
) -> None:
    token = await make_token()
    disks = [tmp_path / "api-disk", tmp_path / "worker-1", tmp_path / "worker-2"]
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=api.url, headers=headers, trust_env=False) as client:
        created = await client.post(
            f"{PREFIX}/importers",
            json={
                "slug": "bucket-users",
                "collection": "bucket_users",
                "key": ["email"],
                "fields": USER_FIELDS,
                "chunk_size": 25,
            },
        )
        assert created.status_code == 201, created.text
        with workers() as started:
            for disk in disks[1:]:
                started.append(start_worker(settings, **env_for(settings, s3, disk)))

            body = users_csv(200)
            response = await client.post(
                f"{PREFIX}/upload/bucket-users", files={"file": ("users.csv", body.encode())}
            )
            assert response.status_code == 202, response.text
            run_id = response.json()["data"]["id"]
            run = await finished(client, run_id)
            failed = sum(1 for i in range(200) if i % 7 == 3)
            assert run["status"] == "completed_with_errors", run
            progress = run["progress"]
            assert (progress["successful"], progress["failed"]) == (200 - failed, failed)

            # Successful rows of byte-range chunks are shown from the input in the bucket.
            rows = (await client.get(f"{PREFIX}/{run_id}/rows", params={"per_page": 5})).json()
            assert [row["data"]["Email"] for row in rows["data"]] == [
                f"user{i}@example.com" for i in range(5)
            ]
            download = await client.get(f"{PREFIX}/{run_id}/failed-rows/download")
            assert download.status_code == 200
            failed_rows = list(csv.DictReader(io.StringIO(download.text)))
            assert [row["Email"] for row in failed_rows] == [
                f"user{i}@example.com" for i in range(200) if i % 7 == 3
            ]

            # Retry only the failed rows: its chunks are payloads, in the bucket too.
            retried = await client.post(f"{PREFIX}/{run_id}/retry")
            assert retried.status_code == 202, retried.text
            retry = await finished(client, retried.json()["data"]["id"])
            # 'old' is still no age
            assert (retry["progress"]["total"], retry["progress"]["failed"]) == (failed, failed)

            # A JSON input goes into chunk payloads; the workers read them from the bucket.
            lines = [f'{{"Email": "json{i}@example.com", "Name": "Json {i}"}}' for i in range(60)]
            response = await client.post(
                f"{PREFIX}/upload/bucket-users",
                files={"file": ("more.ndjson", ("\n".join(lines) + "\n").encode())},
            )
            assert response.status_code == 202, response.text
            pushed = await finished(client, response.json()["data"]["id"])
            assert (pushed["status"], pushed["progress"]["successful"]) == ("completed", 60)

        records = await client.get(f"{PREFIX}/records/bucket_users", params={"per_page": 1})
        assert records.json()["meta"]["total"] == 200 - failed + 60

    # Every input is in the bucket, no chunk payload is left, and no process kept a file.
    keys = s3.keys()
    assert len(keys) == 2 and not any(key.startswith("chunks/") for key in keys), keys
    assert [path for disk in disks for path in files_under(disk)] == []

    # prune removes the runs' inputs from the bucket.
    prune = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "prune", "--days", "0"],
        cwd=ROOT,
        env=outside_env(**env_for(settings, s3, tmp_path / "ops-disk")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert prune.returncode == 0, prune.stderr
    assert s3.keys() == []


async def test_an_upload_over_the_limit_aborts_its_multipart_upload(
    settings: Settings,
    s3: S3,
    create_importer: CreateImporter,
    admin_headers: dict[str, str],
) -> None:
    """Streamed without a length, the file goes over the limit after its first parts reached
    the bucket: the 413 leaves no object and no unfinished upload behind."""
    await create_importer(key=["email"], fields=USER_FIELDS)
    small = settings.model_copy(
        update={"max_upload_mb": 12, "storage_url": s3.url, "s3_endpoint_url": s3.endpoint}
    )
    boundary = "ingest-test-boundary"

    async def body() -> AsyncIterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.csv"'
            "\r\nContent-Type: text/csv\r\n\r\nEmail,Name,Age\n"
        ).encode()
        for _ in range(16):  # 16 MB, past obstore's 10 MB buffer: parts are uploaded
            yield b"a@example.com,Ann,1\n" * 52_429
        yield f"\r\n--{boundary}--\r\n".encode()

    app = create_app(small)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post(
                f"{PREFIX}/upload/users",
                content=body(),
                headers={
                    **admin_headers,
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                },
            )
    assert response.status_code == 413, response.text
    assert response.json()["message"] == "The file is larger than the 12 MB limit."
    assert s3.keys() == []
    assert s3.uploads_in_progress() == []
