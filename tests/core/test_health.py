import httpx

from app.core.config import Settings
from app.main import create_app
from tests.objects import S3


async def test_healthz_answers_without_a_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_reports_every_service_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"postgres": "ok", "redis": "ok", "storage": "ok"}


async def test_readyz_is_503_and_names_the_storage_when_its_bucket_is_missing(
    settings: Settings,
    s3: S3,
) -> None:
    missing = f"s3://{s3.bucket}-gone/ingest"
    broken = settings.model_copy(update={"storage_url": missing, "s3_endpoint_url": s3.endpoint})
    app = create_app(broken)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert (body["checks"]["postgres"], body["checks"]["redis"]) == ("ok", "ok")
    assert body["checks"]["storage"].startswith("unavailable")
    assert body["message"] == "Not ready: storage unreachable."


async def test_readyz_is_503_and_names_redis_when_redis_is_unreachable(settings: Settings) -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    broken = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    app = create_app(broken)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["postgres"] == "ok"
    assert body["checks"]["redis"].startswith("unavailable")
    assert "redis" in body["message"]


async def test_openapi_lists_the_bearer_scheme_and_tags(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["info"]["title"] == "Ingest"
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert "/api/v1/ingest/importers" in spec["paths"]
