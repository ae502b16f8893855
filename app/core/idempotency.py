"""``Idempotency-Key`` on POSTs that create a run (SPEC §6).

The same key with the same body within the TTL returns the original response (same run id);
the same key with a different body is a 422. Keys are scoped to the token. Concurrent requests
with one key are serialised by a transaction-scoped advisory lock, so exactly one creates.
"""

import hashlib
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import json_dumps
from app.core.errors import ValidationFailed


def fingerprint(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\x00")
    return digest.hexdigest()


class Idempotency:
    def __init__(self, request: Request, key: str | None):
        self.request = request
        self.key = key.strip() if key else None
        if self.key is not None and not 1 <= len(self.key) <= 255:
            raise ValidationFailed(
                "The Idempotency-Key header must be 1 to 255 characters.",
                errors={"Idempotency-Key": ["The Idempotency-Key must be 1 to 255 characters."]},
            )

    async def replay(
        self, session: AsyncSession, token_id: int, request_hash: str
    ) -> JSONResponse | None:
        """The stored response for this key, or None when the request should go ahead."""
        if self.key is None:
            return None
        await session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:scope, 0))"),
            {"scope": f"idempotency:{token_id}:{self.key}"},
        )
        ttl = self.request.app.state.settings.idempotency_ttl_hours
        row = (
            await session.execute(
                text(
                    "SELECT request_hash, status_code, response FROM idempotency_keys "
                    "WHERE token_id = :token AND key = :key "
                    "AND created_at > now() - make_interval(hours => :ttl)"
                ),
                {"token": token_id, "key": self.key, "ttl": ttl},
            )
        ).first()
        if row is None:
            # An expired entry would block the unique index: clear it.
            await session.execute(
                text("DELETE FROM idempotency_keys WHERE token_id = :token AND key = :key"),
                {"token": token_id, "key": self.key},
            )
            return None
        if row.request_hash != request_hash:
            message = "The Idempotency-Key was already used with a different request body."
            raise ValidationFailed(message, errors={"Idempotency-Key": [message]})
        return JSONResponse(
            row.response, status_code=row.status_code, headers={"Idempotent-Replayed": "true"}
        )

    async def save(
        self,
        session: AsyncSession,
        token_id: int,
        request_hash: str,
        status_code: int,
        content: Any,
    ) -> None:
        if self.key is None:
            return
        await session.execute(
            text(
                "INSERT INTO idempotency_keys (token_id, key, request_hash, status_code, response)"
                " VALUES (:token, :key, :hash, :status, CAST(:response AS jsonb))"
            ),
            {
                "token": token_id,
                "key": self.key,
                "hash": request_hash,
                "status": status_code,
                "response": json_dumps(jsonable_encoder(content)),
            },
        )


def get_idempotency(
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(description="Replays the original response for a repeated request (24 h)."),
    ] = None,
) -> Idempotency:
    return Idempotency(request, idempotency_key)


IdempotencyDep = Annotated[Idempotency, Depends(get_idempotency)]
