"""Secrets inside a URL (userinfo, query parameters such as ``api_key``) and the origin they
belong to: the API shows such a URL masked, and a masked URL sent back gets its secrets from
the stored one, on the same origin only."""

import re
from collections import Counter
from urllib.parse import SplitResult, unquote_plus, urlsplit, urlunsplit

MASK = "***"
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Query parameters whose values are secrets, compared in snake case: `apiKey`, `API-KEY`,
# `X-Amz-Signature` are `api_key`, `api_key`, `x_amz_signature`.
_SECRET_NAMES = frozenset(
    {
        "key",
        "token",
        "secret",
        "password",
        "passwd",
        "pwd",
        "signature",
        "sig",
        "apikey",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "jwt",
    }
)
_SECRET_SUFFIXES = ("_key", "_token", "_secret", "_password", "_signature", "_credential")
_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port): what a secret is bound to, as browsers and `requests` have it."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, parts.hostname or "", parts.port or _DEFAULT_PORTS.get(scheme)


def is_secret_parameter(name: str) -> bool:
    snake = _CAMEL_HUMP.sub("_", unquote_plus(name).strip()).lower().replace("-", "_")
    return snake in _SECRET_NAMES or snake.endswith(_SECRET_SUFFIXES)


def mask_url(url: str) -> str:
    """``https://u:pw@h/x?api_key=k&page=2`` -> ``https://u:***@h/x?api_key=***&page=2``: the
    password (or a user name alone, often a token) and secret parameters' values."""
    parts = urlsplit(url)
    netloc = _mask_netloc(parts.netloc)
    query = "&".join(_mask_pair(pair) for pair in parts.query.split("&"))
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def restore_url(sent: str, stored: str | None) -> str:
    """``sent`` with each masked secret taken from ``stored`` when both have the same origin
    (a secret never moves to another host). Raises ``ValueError`` if a mask is left."""
    if stored is not None and _holds_mask(sent) and origin(sent) == origin(stored):
        sent = _restore(urlsplit(sent), urlsplit(stored))
    if _holds_mask(sent):
        raise ValueError(
            f"The url holds a masked secret ({MASK}) that cannot be restored: only the stored "
            "url's own secrets are kept, on its own scheme, host and port. Send the real value."
        )
    return sent


def _mask_netloc(netloc: str) -> str:
    userinfo, at, host = netloc.rpartition("@")
    if not at:
        return netloc
    user, colon, _ = userinfo.partition(":")
    return f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"


def _mask_pair(pair: str) -> str:
    name, equals, value = pair.partition("=")
    return f"{name}={MASK}" if equals and value and is_secret_parameter(name) else pair


def _is_mask(value: str) -> bool:
    return unquote_plus(value) == MASK


def _holds_mask(url: str) -> bool:
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at and any(_is_mask(part) for part in userinfo.split(":")):
        return True
    return any(_is_mask(value) for _, value in _secret_pairs(parts.query))


def _secret_pairs(query: str) -> list[tuple[str, str]]:
    pairs = (pair.partition("=") for pair in query.split("&"))
    return [(name, value) for name, equals, value in pairs if equals and is_secret_parameter(name)]


def _restore(sent: SplitResult, stored: SplitResult) -> str:
    masked = unquote_plus(_mask_netloc(stored.netloc)) == unquote_plus(sent.netloc)
    netloc = stored.netloc if masked else sent.netloc
    stored_values: dict[str, list[str]] = {}
    for name, value in _secret_pairs(stored.query):
        stored_values.setdefault(name, []).append(value)
    seen: Counter[str] = Counter()
    pairs = []
    for pair in sent.query.split("&"):
        name, equals, value = pair.partition("=")
        if equals and _is_mask(value) and is_secret_parameter(name):
            # The n-th masked `name` takes the n-th stored value of `name`.
            values, index = stored_values.get(name, []), seen[name]
            seen[name] += 1
            if index < len(values):
                pair = f"{name}={values[index]}"
        pairs.append(pair)
    return urlunsplit(sent._replace(netloc=netloc, query="&".join(pairs)))
