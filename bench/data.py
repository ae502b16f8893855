"""Deterministic users CSVs for the benchmark, and the typed rows of the COPY baseline."""

import csv
import random
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"
HEADER = ["id", "email", "name", "age", "country", "signup_date", "score", "tags", "notes"]
COUNTRIES = ["US", "GB", "DE", "FR", "NL", "ES", "IT", "SE", "PL", "CA"]
FIRST = "james mary robert patricia john jennifer michael linda david elizabeth william barbara"
LAST = "smith johnson williams brown jones garcia miller davis rodriguez martinez lopez wilson"
TAGS = "admin beta newsletter vip trial partner churn-risk mobile api early-adopter"
WORDS = "invoice quarterly discount renewal support phone meeting demo upgrade refund"
NOTES = (
    'Asked about the {0}, then the {1}; said "call me back"',
    "{0}, {1} and {2}",
    'Prefers {0} by mail, not "{1}", thanks',
    "",
    "Met at the {2} event",
)
GENERATOR = 1  # part of the file names: bump it when the rows below change
# About 1% of rows carry one of these (column index, value): each is a validation failure.
INVALID_RATE = 0.01
BAD_VALUES = (
    (1, "not-an-email"),
    (1, "someone@@example"),
    (3, "212"),
    (3, "abc"),
    (5, "2021-02-30"),
    (5, "12/03/2021"),
    (4, "XX"),
    (6, "n/a"),
)


def _rows(count: int, seed: int, changed: bool) -> Iterator[list[Any]]:
    """Rows in batches of column-wise draws (``choices`` over small pools is what keeps
    generation at a few seconds per million rows)."""
    rng = random.Random(seed)
    first, last, tags, words = FIRST.split(), LAST.split(), TAGS.split(), WORDS.split()
    day0 = date(2015, 1, 1).toordinal()
    days = [date.fromordinal(day0 + n).isoformat() for n in range(3650)]
    tag_pool = [";".join(rng.sample(tags, rng.randrange(4))) for _ in range(500)]
    suffix = " (changed)" if changed else ""
    note_pool = [rng.choice(NOTES).format(*rng.sample(words, 3)) + suffix for _ in range(2000)]
    for offset in range(0, count, 50_000):
        n = min(50_000, count - offset)
        columns = zip(
            range(offset + 1, offset + n + 1),
            rng.choices(first, k=n),
            rng.choices(last, k=n),
            rng.choices(range(18, 91), k=n),
            rng.choices(COUNTRIES, k=n),
            rng.choices(days, k=n),
            rng.choices(range(100_000), k=n),
            rng.choices(tag_pool, k=n),
            rng.choices(note_pool, k=n),
            strict=True,
        )
        for i, a, b, age, country, day, cents, tag, note in columns:
            email, name = f"{a}.{b}.{i}@example.com", f"{a.title()} {b.title()}"
            row = [i, email, name, age, country, day, cents / 100, tag, note]
            if rng.random() < INVALID_RATE:
                column, value = rng.choice(BAD_VALUES)
                row[column] = value
            yield row


def users_csv(count: int, seed: int, *, changed: bool = False) -> Path:
    """The users CSV of ``count`` rows (generated once, then reused); the changed variant has the
    same keys and every row's notes edited."""
    name = f"users-{count}-s{seed}-g{GENERATOR}{'-changed' if changed else ''}.csv"
    path = DATA_DIR / name
    if path.exists():
        return path
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with partial.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        batch: list[list[Any]] = []
        for row in _rows(count, seed, changed):
            batch.append(row)
            if len(batch) == 50_000:
                writer.writerows(batch)
                batch.clear()
        writer.writerows(batch)
    partial.rename(path)
    return path


def resent_csv(path: Path) -> Path:
    """``path`` with one blank line added at its end: the same rows in another file (a blank
    line is no row), so nothing can be reused from the run that read ``path``."""
    copy = path.with_name(path.stem + "-resent.csv")
    if not copy.exists():
        partial = copy.with_suffix(".partial")
        partial.write_bytes(path.read_bytes() + b"\r\n")
        partial.rename(copy)
    return copy


def _int(value: str) -> int | None:
    try:
        number = int(value)
    except ValueError:
        return None
    return number if -(2**31) <= number < 2**31 else None


def _float(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _date(value: str) -> date | None:
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def typed_batches(path: Path, size: int = 200_000) -> Iterator[list[tuple[Any, ...]]]:
    """The file's rows as tuples for the typed baseline table (a value that does not parse is
    NULL, so every row is copied)."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        next(reader)
        batch: list[tuple[Any, ...]] = []
        for i, email, name, age, country, day, score, tags, notes in reader:
            batch.append(
                (
                    int(i),
                    email,
                    name,
                    _int(age),
                    country,
                    _date(day),
                    _float(score),
                    tags.split(";") if tags else [],
                    notes,
                )
            )
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch
