"""The API keeps its OpenAPI contract under generated requests (schemathesis).

A bounded, derandomized run over every operation (a few examples each, a fixed seed), in-process
over ASGI with an admin token, against the real test Postgres and Redis: no 5xx, and every
response is one the schema declares (status code, content type, headers, body). Part of the
default run; `-m "not schemathesis"` leaves it out.
"""

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from app.core.config import Settings
from app.main import create_app

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    unsupported_method,
]
# Not `allow_header_conformance`: it reads one path template, and /items/{item_id} (GET) and
# /items/{type} (POST) overlap, so the right `Allow` of /items/1 (GET, POST) fails it.
SEED = 20261122
EXAMPLES_PER_OPERATION = 5


pytestmark = pytest.mark.schemathesis


def _load_schema() -> schemathesis.BaseSchema:
    # The document only: building the app opens no connection (its lifespan does). Each test
    # sends its requests to an app of its own, whose lifespan schemathesis starts with the first
    # request and ends with the test.
    document = create_app(
        Settings(
            database_url="postgresql://unused@127.0.0.1:1/unused",
            redis_url="redis://127.0.0.1:1/0",
            _env_file=None,  # type: ignore[call-arg]
        )
    ).openapi()
    loaded = schemathesis.openapi.from_dict(document)
    loaded.config.seed = SEED
    loaded.config.generation.update(
        max_examples=EXAMPLES_PER_OPERATION, deterministic=True, database="none"
    )
    # Revoking a token may revoke the one the test authenticates with. Nothing else is left out:
    # each operation gets an empty database, and no worker runs the runs it starts.
    return loaded.exclude(method="DELETE", path="/api/v1/ingest/tokens/{token_id}")


schema = _load_schema()


@pytest.fixture
def asgi_app(settings: Settings) -> FastAPI:
    return create_app(settings)


@schema.parametrize()
# The fixtures are per operation on purpose: its examples share one app and one database.
@hypothesis.settings(suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
def test_every_operation_keeps_its_openapi_contract(
    case: schemathesis.Case, asgi_app: FastAPI, admin_headers: dict[str, str]
) -> None:
    case.call_and_validate(app=asgi_app, headers=admin_headers, checks=CHECKS)
