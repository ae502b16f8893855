"""A real S3 protocol server on loopback (moto's standalone server) for the storage tests.

Every test gets a bucket of its own; `S3.env` is what a process needs to use it
(``INGEST_STORAGE_URL``, the endpoint and the AWS variables obstore reads).
"""

import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "ingest-test",
    "AWS_SECRET_ACCESS_KEY": "ingest-test-secret",
    "AWS_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3:
    endpoint: str
    bucket: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/ingest"

    @property
    def env(self) -> dict[str, str]:
        return {
            "INGEST_STORAGE_URL": self.url,
            "INGEST_S3_ENDPOINT_URL": self.endpoint,
            **CREDENTIALS,
        }

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_REGION"],
        )

    def keys(self) -> list[str]:
        """Every object in the bucket (under the deployment's prefix)."""
        listed = self.client().list_objects_v2(Bucket=self.bucket)
        return sorted(item["Key"].removeprefix("ingest/") for item in listed.get("Contents", []))

    def uploads_in_progress(self) -> list[Any]:
        return list(self.client().list_multipart_uploads(Bucket=self.bucket).get("Uploads", []))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = Path(sys.executable).with_name("moto_server")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(server), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"moto_server exited:\n{log.read_text()}")
            try:
                httpx.get(endpoint, timeout=2, trust_env=False)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start:\n{log.read_text()}")
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3:
    """A fresh bucket; this process's environment has the credentials to reach it."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    bucket = S3(s3_endpoint, f"ingest-{secrets.token_hex(6)}")
    bucket.client().create_bucket(Bucket=bucket.bucket)
    return bucket
