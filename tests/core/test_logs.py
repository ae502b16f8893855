"""INGEST_LOG_FORMAT=json: `ingest serve` and `ingest worker` write one JSON object per line,
with the request's id (taken from X-Request-ID or made, and echoed) and the job's run, chunk
and importer."""

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx

from app.core.config import Settings
from tests.cli.harness import server_env, serving
from tests.conftest import CreateImporter, MakeToken
from tests.factories import USER_FIELDS
from tests.worker.processes import start_worker, workers
from tests.worker.test_leases import mixed_csv

API = "/api/v1/ingest"
DEADLINE_S = 30


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of the log, each of which must be one JSON object."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(line, dict) for line in parsed)
    for line in parsed:
        assert {"ts", "level", "logger", "message"} <= line.keys(), line
    return parsed


async def test_json_logs_of_the_api_and_the_worker_name_the_request_and_the_run(
    settings: Settings,
    create_importer: CreateImporter,
    make_token: MakeToken,
    tmp_path: Path,
) -> None:
    await create_importer(key=["email"], fields=USER_FIELDS, chunk_size=20)
    headers = {"Authorization": f"Bearer {await make_token()}"}
    env = {**server_env(settings), "INGEST_LOG_FORMAT": "json", "INGEST_LOG_LEVEL": "INFO"}
    api_log, worker_log = tmp_path / "api.log", tmp_path / "worker.log"

    with serving(env, api_log) as api, workers() as started:
        async with httpx.AsyncClient(base_url=api.url, timeout=DEADLINE_S, trust_env=False) as http:
            sent = await http.post(
                f"{API}/upload/users",
                files={"file": ("users.csv", mixed_csv())},
                headers={**headers, "X-Request-ID": "req-upload-1"},
            )
            assert sent.status_code < 300, sent.text
            assert sent.headers["x-request-id"] == "req-upload-1"
            run_id = sent.json()["data"]["id"]
            made = await http.get(f"{API}/{run_id}", headers=headers)
            generated = made.headers["x-request-id"]
            assert len(generated) == 32 and generated != "req-upload-1"
            forged = await http.get(
                f"{API}/{run_id}", headers={**headers, "X-Request-ID": "a\\nb" * 100}
            )
            assert forged.headers["x-request-id"] != "a\\nb" * 100  # refused: a new one

            started.append(
                start_worker(
                    settings, worker_log, INGEST_LOG_FORMAT="json", INGEST_LOG_LEVEL="DEBUG"
                )
            )
            end = time.monotonic() + DEADLINE_S
            while (await http.get(f"{API}/{run_id}", headers=headers)).json()["data"][
                "status"
            ] not in ("completed", "completed_with_errors"):
                assert time.monotonic() < end, "the run did not finish"
                await asyncio.sleep(0.1)
        for proc in started:
            proc.terminate()
            proc.wait(15)

    api_lines = json_lines(api_log)
    assert [line for line in api_lines if line.get("request_id") == "req-upload-1"]
    assert [line for line in api_lines if line.get("request_id") == generated]
    assert "Started server process" in " ".join(line["message"] for line in api_lines)

    worker_lines = json_lines(worker_log)
    mine = [line for line in worker_lines if line.get("run_id") == run_id]
    assert mine and all(line["importer"] == "users" for line in mine)
    assert {line["chunk"] for line in mine if "chunk" in line} == {0, 1, 2}
    assert any(line["logger"] == "ingest.worker" for line in mine)
