"""Download a URL source into storage: http(s) only, redirects capped and re-checked, size and
time capped, private and loopback addresses refused unless ``INGEST_ALLOW_PRIVATE_URLS``."""

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

from app.core.config import Settings
from app.core.storage import TooLarge, extension, new_key, storage_of
from app.core.url_secrets import mask_url, origin


class FetchError(Exception):
    """The URL could not be fetched; str() is the run's error message."""


@dataclass(frozen=True)
class Fetched:
    key: str
    size: int
    sha256: str
    filename: str


async def check_url(url: str, allow_private: bool, *, deliver: bool = False) -> None:
    """Refuse (FetchError) a URL that is not http(s), or whose host resolves to an address
    that is not global unless `allow_private`: a URL to fetch, or (`deliver`) to deliver to."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        can = "receive deliveries" if deliver else "be fetched"
        raise FetchError(f"Only http and https URLs can {can}: {mask_url(url)}")
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname,
            parts.port or (443 if parts.scheme == "https" else 80),
            type=socket.SOCK_STREAM,
        )
    except socket.gaierror as exc:
        raise FetchError(f"Cannot resolve {parts.hostname}: {exc.strerror}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            verb = "deliver to" if deliver else "fetch"
            raise FetchError(
                f"Refusing to {verb} {parts.hostname}: it resolves to a private or loopback "
                f"address ({address}). Set INGEST_ALLOW_PRIVATE_URLS=true to allow it."
            )


async def fetch_to_storage(url: str, headers: dict[str, str], settings: Settings) -> Fetched:
    """Download ``url``; the configured ``headers`` (secrets, as a rule) go to its origin only:
    a redirect to another scheme, host or port drops them for the rest of the chain."""
    limit = settings.url_max_mb * 1024 * 1024
    name = Path(urlsplit(url).path).name or "download"
    key = new_key(extension(name))
    timeout = httpx.Timeout(settings.url_timeout_seconds)
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            for _ in range(settings.url_max_redirects + 1):
                await check_url(url, settings.allow_private_urls)
                async with client.stream("GET", url, headers=headers) as response:
                    if response.is_redirect:
                        target = urljoin(url, response.headers.get("location", ""))
                        if origin(target) != origin(url):
                            headers = {}
                        url = target
                        continue
                    if response.status_code >= 400:
                        raise FetchError(f"The URL answered HTTP {response.status_code}.")
                    blocks = response.aiter_bytes(1 << 16)
                    stored = await storage_of(settings).write_stream(key, blocks, limit=limit)
                    return Fetched(key, stored.size, stored.sha256, name)
            raise FetchError(f"Too many redirects (more than {settings.url_max_redirects}).")
    except TooLarge as exc:
        raise FetchError(f"The download is over the {settings.url_max_mb} MB limit.") from exc
    except httpx.HTTPError as exc:
        raise FetchError(f"Fetching the URL failed: {type(exc).__name__}: {exc}") from exc
