"""The command line's side of the HTTP API: where the API is, which token to send, and the
one-line errors and exit codes every operator command ends with.

The API is found in ``INGEST_URL`` + ``INGEST_TOKEN``, else in a profile that ``ingest login``
or ``ingest dev`` wrote to ``$XDG_CONFIG_HOME/ingest/config.toml`` (``~/.config/ingest/...``
without XDG_CONFIG_HOME), chosen by ``--profile NAME`` or ``INGEST_PROFILE``, else the
file's ``default``. Each variable wins over the profile's value, but a profile's token is never
sent to another server than the profile's own::

    default = "dev"

    [profiles.dev]
    url = "http://127.0.0.1:8000"
    token = "ingest_..."
"""

import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any

import httpx
import typer

from app import __version__

EXIT_FAILED = 1  # the run failed or was cancelled, or the API refused the request
EXIT_USAGE = 2  # bad arguments (click's own code for them), or no API configured
EXIT_UNREACHABLE = 3  # connection refused, unknown host, timeout

# The server's default INGEST_API_PREFIX. A URL already ending in it is used as it is.
API_PREFIX = "/api/v1/ingest"
# Uploads stream for as long as they need; this bounds each read and write of the socket.
TIMEOUT = httpx.Timeout(60.0, connect=10.0)
PAGE_SIZE = 100  # the API's largest page
DEV_PROFILE = "dev"

NOT_CONFIGURED = (
    "no API configured: set INGEST_URL and INGEST_TOKEN, or run `ingest login URL` "
    "(`make run` writes a profile for the instance it starts)"
)
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

ProfileOption = Annotated[
    str | None,
    typer.Option(
        "--profile",
        envvar="INGEST_PROFILE",
        show_envvar=False,
        help="The profile to use (default: the config file's default; env INGEST_PROFILE).",
    ),
]


class ClientError(Exception):
    """A failure to report in one line, with the exit code it ends the command with."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.status = status


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """One clear line on stderr, no traceback."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


# --- profiles -------------------------------------------------------------------------------


def config_path() -> Path:
    # XDG says a relative XDG_CONFIG_HOME is to be ignored.
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config"
    return base / "ingest" / "config.toml"


@dataclass(frozen=True)
class Profile:
    url: str
    token: str


@dataclass
class Profiles:
    """The profile file: named profiles and the name of the default one."""

    path: Path
    default: str | None = None
    profiles: dict[str, Profile] = field(default_factory=dict)

    @classmethod
    def load(cls) -> "Profiles":
        path = config_path()
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(path)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ClientError(f"cannot read {path}: {exc}", EXIT_USAGE) from None
        default = data.get("default")
        profiles: dict[str, Profile] = {}
        for name, values in (data.get("profiles") or {}).items():
            url = values.get("url") if isinstance(values, dict) else None
            token = values.get("token") if isinstance(values, dict) else None
            if not isinstance(url, str) or not isinstance(token, str):
                raise ClientError(f"{path}: profile {name!r} needs a url and a token", EXIT_USAGE)
            profiles[name] = Profile(url, token)
        return cls(path, default if isinstance(default, str) else None, profiles)

    def get(self, name: str | None) -> Profile | None:
        return self.profiles.get(name) if name else None

    def save(self) -> None:
        """Write the file readable by its owner only (it holds tokens), or remove it when no
        profile is left; written whole to a temporary file first, so it is never half there."""
        if not self.profiles:
            self.path.unlink(missing_ok=True)
            return
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
        lines = ["# Ingest CLI profiles, written by `ingest login` and `ingest dev`.", ""]
        if self.default in self.profiles:
            lines.append(f"default = {_quote(self.default or '')}")
        for name, profile in sorted(self.profiles.items()):
            lines += ["", f"[profiles.{name}]"]
            lines += [f"url = {_quote(profile.url)}", f"token = {_quote(profile.token)}"]
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write("\n".join(lines) + "\n")
            os.replace(temporary, self.path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise


def _quote(value: str) -> str:
    # A JSON string is a TOML basic string, once DEL (which TOML wants escaped) is escaped.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def check_profile_name(name: str) -> str:
    if not _PROFILE_NAME.match(name):
        raise ClientError(
            f"a profile name is letters, digits, '-' and '_' (at most 64), not {name!r}",
            EXIT_USAGE,
        )
    return name


def check_url(url: str) -> str:
    """An http(s) URL, without its trailing slash."""
    try:
        parsed = httpx.URL(url.strip())
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ClientError(
            f"{url!r} is not an http(s) URL, e.g. http://127.0.0.1:8000", EXIT_USAGE
        ) from None
    return str(parsed).rstrip("/")


def save_profile(name: str, profile: Profile, *, make_default: bool) -> Profiles:
    """Add or replace a profile; it becomes the default when asked to or when there is none."""
    profiles = Profiles.load()
    profiles.profiles[check_profile_name(name)] = profile
    if make_default or profiles.default not in profiles.profiles:
        profiles.default = name
    profiles.save()
    return profiles


def save_dev_profile(url: str, token: str) -> Profiles:
    """The profile of the instance `ingest dev` started: the default unless another profile
    already is (a default that points at a real deployment stays where it was)."""
    return save_profile(DEV_PROFILE, Profile(url, token), make_default=False)


# --- where the API is -----------------------------------------------------------------------


@dataclass(frozen=True)
class ApiConfig:
    url: str
    token: str
    # Where the token came from, for the hint when the API refuses it.
    origin: str


def _env(name: str) -> str | None:
    return os.environ.get(name, "").strip() or None


def _same(a: str, b: str) -> bool:
    return api_root(a) == api_root(b)


def api_configured(profile: str | None) -> bool:
    """Whether anything names an API: a variable, a chosen profile, or a default profile."""
    if _env("INGEST_URL") or _env("INGEST_TOKEN") or profile:
        return True
    profiles = Profiles.load()
    return profiles.get(profiles.default) is not None


def resolve(profile: str | None) -> ApiConfig:
    """The API's URL and the token to send it, from the environment and the profile file."""
    env_url, env_token = _env("INGEST_URL"), _env("INGEST_TOKEN")
    profiles = Profiles.load()
    name = profile or profiles.default
    chosen = profiles.get(name)
    if profile and chosen is None:
        known = ", ".join(sorted(profiles.profiles)) or "none"
        raise ClientError(
            f"no profile {profile!r} in {profiles.path} (profiles: {known}); "
            f"`ingest login URL --profile {profile}` writes it",
            EXIT_USAGE,
        )
    url = check_url(env_url) if env_url else (chosen.url if chosen else None)
    token, origin = env_token, "the token in INGEST_TOKEN"
    # A profile's token goes to its own server only, never to another INGEST_URL.
    if token is None and chosen is not None and url is not None and _same(url, chosen.url):
        token, origin = chosen.token, f"the token of profile {name!r} in {profiles.path}"
    if url is None and token is None:
        raise ClientError(NOT_CONFIGURED, EXIT_USAGE)
    if url is None:
        raise ClientError(
            "INGEST_TOKEN is set but not INGEST_URL, the API to send it to", EXIT_USAGE
        )
    if token is None:
        raise ClientError(
            f"INGEST_URL is set but not INGEST_TOKEN, the token for {url}", EXIT_USAGE
        )
    return ApiConfig(url, token, origin)


def api_root(url: str) -> str:
    base = url.rstrip("/")
    return base if base.endswith(API_PREFIX) else base + API_PREFIX


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- the client -----------------------------------------------------------------------------


class Client:
    """A synchronous client of one API: bearer token, timeouts, and every failure turned into
    a ``ClientError`` (the API's own ``message`` when it answered one)."""

    def __init__(self, config: ApiConfig) -> None:
        self.config = config
        host = httpx.URL(config.url).host
        self.loopback = _is_loopback(host)
        self._http = httpx.Client(
            base_url=api_root(config.url),
            headers={
                "Authorization": f"Bearer {config.token}",
                "Accept": "application/json",
                "User-Agent": f"ingest-cli/{__version__}",
            },
            timeout=TIMEOUT,
            # A proxy set for the outside world must not catch `ingest dev` on this host.
            trust_env=not self.loopback,
        )

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise self._unreachable("timed out") from None
        except httpx.TransportError as exc:
            raise self._unreachable(_reason(exc)) from None
        if response.is_error:
            raise self._refused(response)
        return response

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        return self._json(self.request("GET", path, params=_present(params)))

    def post(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return self._json(self.request("POST", path, **kwargs))

    def delete(self, path: str) -> None:
        self.request("DELETE", path)

    def pages(self, path: str, limit: int | None = None, **params: Any) -> list[dict[str, Any]]:
        """The items of a paginated list, page after page, up to ``limit``."""
        found: list[dict[str, Any]] = []
        # The same page size throughout: pages are offsets of page * per_page.
        per_page = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit)
        page = 1
        while True:
            body = self.get(path, **params, page=page, per_page=per_page)
            found += body["data"]
            if (limit is not None and len(found) >= limit) or page >= body["meta"]["last_page"]:
                return found[:limit]
            page += 1

    def server_events(self, path: str) -> Iterator[tuple[str, Any]]:
        """The Server-Sent Events of ``path`` as (event, JSON data), while the server sends
        them. Nothing (or an early end) when it offers no stream there, answers an error or
        the connection breaks: the caller then falls back to plain requests."""
        try:
            with self._http.stream(
                "GET", path, headers={"Accept": "text/event-stream"}
            ) as response:
                content_type = response.headers.get("content-type", "")
                if response.is_error or not content_type.startswith("text/event-stream"):
                    return
                event, data = "message", list[str]()
                for line in response.iter_lines():
                    if not line:
                        if data:
                            yield event, json.loads("\n".join(data))
                        event, data = "message", []
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
        except (httpx.HTTPError, ValueError):
            return

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ClientError(
                f"{self.config.url} answered {response.status_code} without Ingest's JSON: "
                "is it the Ingest API?"
            )
        return body

    def _unreachable(self, reason: str) -> ClientError:
        hint = " (is `ingest dev` or `make run` running?)" if self.loopback else ""
        return ClientError(
            f"cannot reach the API at {self.config.url}: {reason}{hint}", EXIT_UNREACHABLE
        )

    def _refused(self, response: httpx.Response) -> ClientError:
        try:
            body = response.json()
        except ValueError:
            body = None
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, str) or not message.strip():
            message = f"{self.config.url} answered {response.status_code} {response.reason_phrase}"
        message = " ".join(message.split())  # one line, whatever the server sent
        if response.status_code == 401:
            message += f" (the API refused {self.config.origin})"
        return ClientError(message, EXIT_FAILED, response.status_code)


def _present(params: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if value is not None}


def _reason(exc: httpx.TransportError) -> str:
    """``[Errno 111] Connection refused`` as ``connection refused``."""
    lines = str(exc).strip().splitlines()
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", lines[0]) if lines else type(exc).__name__
    return text[:1].lower() + text[1:]


@contextmanager
def reporting() -> Iterator[None]:
    """A ``ClientError`` inside the block ends the command with its line and exit code."""
    try:
        yield
    except ClientError as exc:
        raise fail(exc.message, exc.exit_code) from None


@contextmanager
def connect(profile: str | None) -> Iterator[Client]:
    """The client of the configured API for one command, failures reported as ``reporting``."""
    with reporting():
        config = resolve(profile)
        with Client(config) as client:
            yield client
