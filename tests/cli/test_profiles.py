"""The profile file's rules, without a server: which profile is the default, and what a
profile keeps, exactly."""

import stat
import tomllib
from pathlib import Path

import pytest

from app.client import Profile, Profiles, save_dev_profile, save_profile


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    return tmp_path


def test_the_dev_profile_is_the_default_only_when_no_other_profile_is(home: Path) -> None:
    assert save_dev_profile("http://127.0.0.1:8000", "ingest_a").default == "dev"
    save_profile("prod", Profile("https://ingest.example.com", "ingest_p"), make_default=True)

    profiles = save_dev_profile("http://127.0.0.1:8001", "ingest_b")

    assert profiles.default == "prod"  # a real deployment stays the default
    assert profiles.profiles["dev"] == Profile("http://127.0.0.1:8001", "ingest_b")
    assert Profiles.load() == profiles


def test_a_profile_saved_with_no_default_leaves_the_default_alone(home: Path) -> None:
    save_profile("a", Profile("http://127.0.0.1:1", "ingest_a"), make_default=False)
    profiles = save_profile("b", Profile("http://127.0.0.1:2", "ingest_b"), make_default=False)
    assert profiles.default == "a"  # the first one became it, as there was none


def test_a_profile_keeps_any_text_exactly_in_a_private_file(home: Path) -> None:
    odd = 'to"k\\en\x7fé'
    save_profile("x", Profile("http://127.0.0.1:8000/base", odd), make_default=True)

    path = home / "ingest" / "config.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert tomllib.loads(path.read_text())["profiles"]["x"]["token"] == odd
    assert Profiles.load().profiles["x"].token == odd


def test_removing_the_last_profile_removes_the_file(home: Path) -> None:
    profiles = save_profile("x", Profile("http://127.0.0.1:8000", "ingest_x"), make_default=True)
    del profiles.profiles["x"]
    profiles.save()
    assert not (home / "ingest" / "config.toml").exists()
