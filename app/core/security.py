"""Service tokens: ``ingest_`` + 40 base62 characters of secret + a 6-character checksum.

The checksum lets a mistyped or truncated token be refused without a database query; only a
SHA-256 of the whole token is stored.
"""

import hashlib
import hmac
import re
import secrets
import zlib

TOKEN_PREFIX = "ingest_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SECRET_LEN = 40  # 40 base62 characters ≈ 238 bits of entropy
_CHECK_LEN = 6
_TOKEN_RE = re.compile(
    rf"^{TOKEN_PREFIX}([0-9A-Za-z]{{{_SECRET_LEN}}})([0-9A-Za-z]{{{_CHECK_LEN}}})$"
)


def _base62(number: int, width: int) -> str:
    out = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        out.append(_ALPHABET[rem])
    return "".join(reversed(out))


def _checksum(secret: str) -> str:
    return _base62(zlib.crc32(secret.encode()), _CHECK_LEN)


def generate_token() -> str:
    secret = "".join(secrets.choice(_ALPHABET) for _ in range(_SECRET_LEN))
    return f"{TOKEN_PREFIX}{secret}{_checksum(secret)}"


def is_well_formed(token: str) -> bool:
    match = _TOKEN_RE.match(token)
    if match is None:
        return False
    return hmac.compare_digest(_checksum(match.group(1)), match.group(2))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def display_prefix(token: str) -> str:
    return token[: len(TOKEN_PREFIX) + 6]
