"""The canonical form of a source URL: what uniqueness and the push scope check compare."""

from urllib.parse import urlsplit, urlunsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
INVALID_URL = "The source url must be a valid URL."


def canonical_url(value: str) -> str:
    """``HTTPS://Example.com:443/feed/#top`` -> ``https://example.com/feed``.

    Scheme and host are lower-cased (hosts are case-insensitive), the default port, the
    fragment and trailing slashes of the path go; the path's case and the query stay, as a
    server may tell them apart. Raises ``ValueError`` with a field message.
    """
    text = value.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(INVALID_URL) from exc
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if scheme not in _DEFAULT_PORTS or not host or any(ch.isspace() for ch in text):
        raise ValueError(INVALID_URL)
    if parts.username is not None or parts.password is not None:
        raise ValueError("The source url must not contain credentials.")
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        host = host.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), parts.query, ""))


def same_source_url(a: str, b: str) -> bool:
    """True when both name the same source (compared in canonical form)."""
    try:
        return canonical_url(a) == canonical_url(b)
    except ValueError:
        return False
