"""A columnar chunk's plan (`plan_frame`) against the per-row plan (`plan_chunk`) on the same
rows: keys repeated within the chunk and from earlier chunks, records that exist with the
same or other content (some of another source, for a run of a source), every `on_duplicate`
and every action, dry runs; the counts, the row log, the outcome codes, the records written
(and which by COPY) and the records touched must be the same."""

import os
from collections import Counter
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.importers.schemas import ImporterDefinition
from app.pipeline.prepare import ChunkValidator
from app.pipeline.writer import plan_chunk, plan_frame
from app.records.store import Known, content_hash
from app.runs.rowlog import encode

EXAMPLES = int(os.environ.get("INGEST_PROPERTY_EXAMPLES", "40")) * 5
COLUMNS = ["key", "value", "note"]
FIRST_ROW = 10
RUN_ID = 7


@pytest.fixture(autouse=True)
def clean_database() -> None:
    """No database here: the suite's table truncation is not needed."""


KEYS = st.sampled_from(["a", "b", "c", "d", " a", ""])  # ' a' is 'a'; '' fails `required`
VALUES = st.sampled_from(["1", "2", "x", ""])  # 'x' fails; '' is null


@st.composite
def chunks(draw: st.DrawFn) -> dict[str, Any]:
    action = draw(st.sampled_from(["upsert", "replace", "append"]))
    on_duplicate = draw(st.sampled_from(["update", "skip", "fail", "update_if_newer"]))
    definition = ImporterDefinition.model_validate(
        {
            "slug": "plans",
            "collection": "plans",
            "action": action,
            "key": [] if action == "append" else ["key"],
            "on_duplicate": on_duplicate,
            "compare_field": "value" if on_duplicate == "update_if_newer" else None,
            "log_rows": draw(st.sampled_from(["all", "failed"])),
            "fields": {
                "key": {"type": "email" if draw(st.booleans()) else "string"},
                "value": {"type": "integer"},
            },
        }
    )
    rows = draw(
        st.lists(
            st.tuples(KEYS.map(lambda k: f"{k}@x.io" if k.strip() else k), VALUES),
            min_size=1,
            max_size=12,
        )
    )
    # Records that exist: some with the content of a row of the chunk, some with other;
    # of no source, or of source 1 or 2.
    existing: dict[str, Known] = {}
    for key in draw(st.lists(st.sampled_from(["a@x.io", "b@x.io", "c@x.io"]), unique=True)):
        value = draw(st.sampled_from([1, 2, None, 3]))
        owner = draw(st.sampled_from([None, 1, 2]))
        existing[key] = Known(content_hash({"key": key, "value": value}), value, None, owner)
    repeated = draw(st.sets(st.integers(FIRST_ROW, FIRST_ROW + len(rows) - 1)))
    return {
        "definition": definition,
        "rows": rows,
        "existing": existing,
        "repeated": repeated,
        "source": draw(st.sampled_from([None, 1])),
        "dry_run": draw(st.booleans()),
    }


def written(keys: list[str], hashes: list[str], numbers: list[int]) -> dict[str, Any]:
    return {key: (h, n) for key, h, n in zip(keys, hashes, numbers, strict=True)}


@settings(max_examples=EXAMPLES, deadline=None)
@given(case=chunks())
def test_a_frame_plans_its_rows_as_the_per_row_plan_does(case: dict[str, Any]) -> None:
    definition: ImporterDefinition = case["definition"]
    rows, repeated = case["rows"], case["repeated"]
    cells = [[key, value, "n"] for key, value in rows]
    validator = ChunkValidator(definition, COLUMNS)
    source, dry_run = case["source"], case["dry_run"]
    log_all = definition.log_rows == "all" or dry_run
    # A run of a source fails the rows of another source's records.
    foreign = {
        key: f"foreign {key}"
        for key, known in case["existing"].items()
        if source is not None and known.source_id != source
    }

    # The per-row way, as app.pipeline.writer._plan takes it.
    raws = [(FIRST_ROW + i, row, None, FIRST_ROW + i in repeated) for i, row in enumerate(cells)]
    existing = dict(case["existing"])
    own = {key: known for key, known in existing.items() if key not in foreign}
    keyed = validator.keys(raws, validator.hashes(raws), existing)
    checked, unchanged = validator.validate(raws, keyed, own)
    old = plan_chunk(
        checked,
        definition,
        existing,
        run_id=RUN_ID,
        stage=False,
        log_all=log_all,
        columns=COLUMNS,
        copy_originals=False,
        unchanged=unchanged,
        foreign=foreign,
        compact=log_all and not dry_run,
    )

    # The columnar way.
    frames = validator.frames
    assert frames is not None
    frame = pl.DataFrame(
        [list(column) for column in zip(*cells, strict=True)], schema=COLUMNS, orient="col"
    )
    validated = frames.validate(frame)
    keys = validated.keys
    if definition.action == "append":
        keys = [
            None if i in validated.errors else f"{RUN_ID}:{FIRST_ROW + i}" for i in range(len(keys))
        ]
    new = plan_frame(
        validated,
        keys,
        frame,
        definition,
        case["existing"],
        run_id=RUN_ID,
        first_row=FIRST_ROW,
        log_all=log_all,
        columns=COLUMNS,
        duplicates=frozenset(repeated),
        foreign=foreign,
        report=dry_run,
    )

    assert new.counts == old.counts
    assert (new.successful, new.failed, new.skipped) == (old.successful, old.failed, old.skipped)
    # The per-row way logs rows its input hashes found unchanged last.
    assert sorted(new.log, key=lambda entry: entry[1]) == sorted(old.log, key=lambda e: e[1])
    assert new.outcomes == (encode(FIRST_ROW, len(rows), old.codes) if old.codes else None)
    assert Counter(new.touched) == Counter(old.touched)
    old_writes = written(
        list(old.writes),
        [w.hash for w in old.writes.values()],
        [w.row_number for w in old.writes.values()],
    )
    batch, fresh = new.batch or (None, [])
    new_writes = {} if batch is None else written(batch.keys, batch.hashes, batch.row_numbers)
    assert new_writes == old_writes
    copied = set() if batch is None else {batch.keys[n] for n in fresh}
    assert copied == old.new & set(old.writes)
