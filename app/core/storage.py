"""Stored files live under ``INGEST_STORAGE_DIR`` with server-made keys.

Client-supplied file names are kept only as metadata.
"""

import re
import secrets
import unicodedata
from pathlib import Path


def new_key(suffix: str = "") -> str:
    # Two-level fan-out keeps directories small; the key never contains client input
    # beyond a vetted extension.
    token = secrets.token_hex(16)
    ext = suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""
    return f"{token[:2]}/{token}{ext}"


def path_for(storage_dir: Path, key: str) -> Path:
    path = (storage_dir / key).resolve()
    if not path.is_relative_to(storage_dir.resolve()):
        raise ValueError("storage key escapes the storage directory")
    return path


def sanitize_filename(name: str | None, max_length: int = 255) -> str:
    """A display-only version of a client-supplied file name."""
    if not name:
        return "upload"
    name = unicodedata.normalize("NFKC", name).replace("\\", "/").split("/")[-1]
    name = "".join(ch for ch in name if ch.isprintable() and ch not in '\x00<>:"|?*')
    name = name.strip(" .") or "upload"
    if len(name) > max_length:
        stem, dot, ext = name.rpartition(".")
        ext = ext[:16] if dot else ""
        name = (stem or name)[: max_length - len(ext) - 1] + (f".{ext}" if ext else "")
    return name


def extension(name: str) -> str:
    _, dot, ext = name.lower().rpartition(".")
    return f".{ext}" if dot and ext.isalnum() else ""


def remove_quietly(path: Path) -> None:
    path.unlink(missing_ok=True)
