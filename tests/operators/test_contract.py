"""The contract every frame-mode operator keeps, checked on each by one parametrized suite.

Row operators and row entry points (``asof_join``, ``label_join``,
``inactivity`` with ``key=None``, ...: ``(key, row)`` items; the cases with
``rows=True`` in :mod:`tests.operators.contract`) are cases too: their build
turns each input frame into its rows, so every property below checks them on
the same input.

Modelled on River's shared estimator checks: each operator is a *case* of
:mod:`tests.operators.contract` (how to build it, a valid input, which input
columns are numeric), and each property below is one test run on every case:

1. **bad key** — rows with a null key, and a frame whose key column is
   ``Float64``, are ``BadKey`` rejections on ``errs``; the other rows come
   out exactly as without them;
2. **bad item** — a stream item that is not a frame (a ``str``, a ``dict``)
   is a :class:`~streamml.errors.Rejected` holding the item, never a crash
   (and an empty frame is no item); a frame whose payload column cannot
   join the rows held from earlier frames (a naive ``Datetime`` among UTC
   ones) never crashes either: its rows are rejected or carried through;
3. **bad values** — NaN, ±inf and null in a numeric input column, a null
   event time, and whole frames with a numeric column of text, without a
   numeric column or without the event-time column reject their rows and
   nothing else;
4. **out of order within lateness = in order** (event-time operators);
5. **independence** — outputs, and which rows are late, are the same with
   ``shards=1`` and ``shards=3`` and wherever the rows are cut into frames
   (hypothesis over the cut points);
6. **1 worker = 2 workers** — ``cluster_main(..., worker_count_per_proc=2)``
   gives ``run_main``'s outputs;
7. **crash and resume = uninterrupted** — a ``TestingSource.ABORT()``
   half-way with Bytewax recovery, then a resume: the outputs of both
   executions are those of one uninterrupted run;
8. **snapshot record** — every state in the recovery store is a versioned
   plain record (``{"state", "version", "data"}``) whose pickle names no
   ``streamml`` class (resuming from it is property 7).

Every case runs on 600 rows (two joined inputs of 400 and 270) of six
keys, cut into frames of 100, out of order within the lateness, with ties
and a few day-old rows that are late on every run. Rejected injected rows
carry a time a day after the input, so one that moved its key's watermark
would make the key's later rows late: "exactly as without them" covers
event time too. A property that fails for an operator is marked
``xfail(strict=True)`` on that case with the finding (see ``CASES``), so
the mark turns red once it is fixed. Not here: a two-process cluster
(``tests/reliability``), and resuming from stores written by the previous
release (``tests/test_resume_previous_version.py``).
"""

from __future__ import annotations

import io
import pickle
import sqlite3
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSource
from hypothesis import given, settings
from hypothesis import strategies as st

from streamml.errors import Rejected
from tests.operators.contract import (
    ANCIENT_ID,
    BAD_ID,
    CASES,
    Case,
    bad_rows,
    canonical,
    cut,
    frames_of,
    ids,
    in_order,
    row_of,
    rows,
    run,
)

BAD_VALUE_TYPES = {
    "NonFinite",
    "MissingField",
    "MissingInput",
    "NotANumber",
    "BadDtype",
    "InputError",
    "BadTimestamp",
}


def cases(prop: str) -> list:
    """The cases as parameters of property ``prop``, skipped or xfailed where the case says."""
    params = []
    for case in CASES:
        marks = []
        if prop in case.skip:
            marks.append(pytest.mark.skip(reason=case.skip[prop]))
        if prop in case.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=case.xfail[prop]))
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


def _without(outs: dict[str, list], name: str) -> dict[str, Counter]:
    got = canonical(outs)
    del got[name]
    return got


def _split(errs: list[Rejected], injected: Any) -> tuple[list, list]:
    """The rejections of injected rows or items, and the others."""
    new = [r for r in errs if injected(r)]
    return new, [r for r in errs if not injected(r)]


def _injected(row: Any) -> bool:
    return isinstance(row, dict) and row.get("id", 0) >= BAD_ID


def _insert(frames: list, at: int, *items: Any) -> list:
    return [*frames[:at], *items, *frames[at:]]


# ---------------------------------------------------------------- 1. bad key


@pytest.mark.parametrize("case", cases("bad_key"))
def test_a_bad_key_is_rejected_and_the_rest_goes_on(case: Case) -> None:
    tables = case.tables()
    clean = run(case, frames_of(tables))
    sides, injected = [], []
    for s, t in enumerate(tables):
        frames = cut(t)
        nulls = bad_rows(t, [{"k": None}] * 3, BAD_ID + 1000 * s)  # within a frame of good rows
        floats = bad_rows(t, [{}] * 2, BAD_ID + 1000 * s + 100).with_columns(
            k=pl.Series([1.0, 2.0], dtype=pl.Float64)  # a key column of an unsupported dtype
        )
        frames[1] = pl.concat([frames[1].head(5), nulls, frames[1].slice(5)])
        sides.append(_insert(frames, 3, floats))
        injected += nulls["id"].to_list() + floats["id"].to_list()
    got = run(case, sides)
    new, rest = _split(got["errs"], lambda r: row_of(r.original)["id"] >= BAD_ID)
    assert _without(got, "errs") == _without(clean, "errs")
    assert canonical({"errs": rest}) == canonical({"errs": clean["errs"]})
    assert sorted(ids(new)) == sorted(injected)
    assert {r.error_type for r in new} == {"BadKey"}


# ---------------------------------------------------------------- 2. bad item


@pytest.mark.parametrize("case", cases("bad_item"))
def test_an_item_that_is_not_a_frame_is_rejected(case: Case) -> None:
    tables = case.tables()
    clean = run(case, frames_of(tables))
    items = ["not a frame", {"k": "a", "x": 1.0}]
    sides = [
        _insert(_insert(frames, 4, items[1], t.clear()), 1, items[0])  # an empty frame: no item
        for t, frames in zip(tables, frames_of(tables))
    ]
    got = run(case, sides)  # and no crash
    assert all(isinstance(r, Rejected) for r in got["errs"])
    new, rest = _split(
        got["errs"],
        lambda r: not isinstance(row_of(r.original), dict) or "id" not in row_of(r.original),
    )
    assert _without(got, "errs") == _without(clean, "errs")
    assert canonical({"errs": rest}) == canonical({"errs": clean["errs"]})
    assert sorted(map(repr, (r.original for r in new))) == sorted(map(repr, items * len(sides)))


@pytest.mark.parametrize("case", cases("bad_frame"))
def test_a_frame_whose_columns_cannot_join_the_held_rows_never_crashes(case: Case) -> None:
    """A payload column of another dtype than the earlier frames' (a naive ``Datetime`` where
    they hold UTC): the frame's rows are rejected, or carried through, and nothing else changes."""
    tables = case.tables()
    clean = run(case, frames_of(tables))
    sides, injected = [], []
    for s, t in enumerate(tables):
        odd = bad_rows(t, [{}] * 3, BAD_ID + 1000 * s)
        odd = odd.with_columns(pl.col("at").dt.replace_time_zone(None))
        sides.append(_insert(cut(t), 3, odd))
        injected += odd["id"].to_list()
    got = run(case, sides)  # and no crash
    new, rest = _split(got["errs"], lambda r: _injected(r.original))
    carried = {name: [r for r in rows(out) if _injected(r)] for name, out in got.items()}
    kept = {name: [r for r in rows(out) if not _injected(r)] for name, out in got.items()}
    kept["errs"] = rest
    assert canonical(kept) == canonical(clean)
    seen = ids(new) + [r["id"] for out in carried.values() for r in out]
    assert sorted(seen) == sorted(injected)  # each odd row once: rejected or carried through


# ---------------------------------------------------------------- 3. bad values


@pytest.mark.parametrize("case", cases("bad_values"))
def test_bad_values_reject_their_row_only(case: Case) -> None:
    tables = case.tables()
    clean = run(case, frames_of(tables))
    sides, injected = [], []
    for s, t in enumerate(tables):
        changes = [
            {name: bad}
            for name in case.numeric
            for bad in (float("nan"), float("inf"), float("-inf"), None)
        ]
        if case.event_time:
            changes.append({"ts": None})
        bad = bad_rows(t, changes, BAD_ID + 1000 * s)
        frames = cut(t)
        frames[2] = pl.concat([frames[2].head(7), bad, frames[2].slice(7)])
        injected += bad["id"].to_list()
        # whole frames: a numeric column of text, a numeric column missing, event time missing
        base, wholes = BAD_ID + 1000 * s, []
        if case.numeric:
            name = case.numeric[0]
            text = bad_rows(t, [{}] * 2, base + 100).with_columns(pl.col(name).cast(pl.String))
            wholes += [text, bad_rows(t, [{}] * 2, base + 200).drop(name)]
        if case.event_time:
            wholes.append(bad_rows(t, [{}] * 2, base + 300).drop("ts"))
        for j, frame in enumerate(wholes):
            frames.insert(4 + j, frame)
            injected += frame["id"].to_list()
        sides.append(frames)
    assert injected, "no numeric column and no event time: nothing to check"
    got = run(case, sides)
    new, rest = _split(got["errs"], lambda r: row_of(r.original)["id"] >= BAD_ID)
    assert _without(got, "errs") == _without(clean, "errs")
    assert canonical({"errs": rest}) == canonical({"errs": clean["errs"]})
    assert sorted(ids(new)) == sorted(injected)  # one rejection per row
    assert {r.error_type for r in new} <= BAD_VALUE_TYPES


# ---------------------------------------------------------------- 4. order


@pytest.mark.parametrize("case", cases("order"))
def test_out_of_order_within_lateness_equals_in_order(case: Case) -> None:
    assert case.event_time
    tables = [t.filter(pl.col("id") < ANCIENT_ID) for t in case.tables()]
    ordered = [in_order(t) for t in tables]
    assert any(not t.equals(o) for t, o in zip(tables, ordered))  # really out of order
    got = run(case, frames_of(tables))
    want = run(case, frames_of(ordered))
    assert got["late"] == [] and want["late"] == []
    assert canonical(got) == canonical(want)


# ---------------------------------------------------------------- 5. independence


@pytest.mark.parametrize("case", cases("independence"))
def test_shards_and_frame_cuts_change_nothing(case: Case) -> None:
    tables = case.tables()
    reference = canonical(run(case, frames_of(tables), shards=3))
    assert reference == canonical(run(case, frames_of(tables), shards=1))
    if case.event_time:
        assert sum(reference["late"].values()) > 0  # lateness is part of what is compared

    cuts = st.lists(st.integers(1, max(t.height for t in tables) - 1), max_size=40)

    @settings(max_examples=8, deadline=None, database=None)
    @given(st.lists(cuts, min_size=len(tables), max_size=len(tables)), st.sampled_from([1, 3]))
    def check(side_cuts: list[list[int]], shards: int) -> None:
        got = run(case, frames_of(tables, side_cuts), shards=shards)
        assert canonical(got) == reference

    check()


# ---------------------------------------------------------------- 6. workers


@pytest.mark.parametrize("case", cases("workers"))
def test_two_workers_give_one_workers_outputs(case: Case) -> None:
    tables = case.tables()
    one = run(case, frames_of(tables), shards=3)
    two = run(case, frames_of(tables), shards=3, workers=2)
    assert canonical(two) == canonical(one)


# ---------------------------------------------------------------- 7. crash and resume


def _crashing(case: Case, crash: Any, recovery: RecoveryConfig) -> dict[str, list]:
    """Run ``case`` with ``crash`` half-way through its first input's frames.

    Any other input emits all its frames in its first batch. Bytewax's
    recovery restores state exactly, but on resume it replays what an input
    that did *not* crash emitted in the epoch still in flight, so a sink that
    is not transactional (``TestingSink``) sees it twice. Shown with plain
    Bytewax operators (two ``TestingSource`` inputs, ``merge``,
    ``stateful_map``, an ``ABORT`` on one): the other input's last item came
    out twice after the resume at 18 of 20 crash points tried, and never once
    that input was read whole in its first batch. Compared exactly, a join
    would count Bytewax's replays, not its own.
    """
    sides = frames_of(case.tables())
    first = sides[0]
    sides[0] = _insert(first, len(first) // 2, crash)
    return run(case, sides, recovery=recovery, whole=range(1, len(sides)))


@pytest.mark.parametrize("case", cases("resume"))
def test_crash_and_resume_equals_an_uninterrupted_run(case: Case, tmp_path: Path) -> None:
    tables = case.tables()
    whole = run(case, frames_of(tables))
    init_db_dir(tmp_path, 1)
    cfg = RecoveryConfig(str(tmp_path))
    before = _crashing(case, TestingSource.ABORT(), cfg)
    # a resume starts at the crash's index: a fresh ABORT there would fire again
    after = _crashing(case, TestingSource.PAUSE(timedelta(0)), cfg)
    assert sum(map(len, before.values())) < sum(map(len, whole.values()))  # it stopped early
    combined = {name: before[name] + after[name] for name in whole}
    assert canonical(combined) == canonical(whole)


# ---------------------------------------------------------------- 8. snapshot record


class _NamedClasses(pickle.Unpickler):
    """Unpickles, and records every class or function the pickle bytes name."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.named: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        self.named.append(f"{module}.{name}")
        return super().find_class(module, name)


@pytest.mark.parametrize("case", cases("snapshot"))
def test_the_stored_snapshot_is_a_versioned_plain_record(case: Case, tmp_path: Path) -> None:
    init_db_dir(tmp_path, 1)
    _crashing(case, TestingSource.ABORT(), RecoveryConfig(str(tmp_path)))
    db = sqlite3.connect(tmp_path / "part-0.sqlite3")
    try:
        snaps = db.execute("SELECT step_id, ser_change FROM snaps").fetchall()
    finally:
        db.close()
    sources = {f"contract_{case.name}.in{i}" for i in range(len(case.tables()))}
    records = 0
    for step_id, blob in snaps:
        if step_id in sources or blob is None:
            continue
        reader = _NamedClasses(blob)
        value = reader.load()
        assert not [n for n in reader.named if n.split(".")[0] in ("streamml", "operators")], (
            step_id,
            reader.named,
        )
        if value is None:  # a state Bytewax discarded
            continue
        assert isinstance(value, dict) and set(value) == {"state", "version", "data"}, step_id
        assert isinstance(value["state"], str) and value["state"].startswith("streamml.")
        assert isinstance(value["version"], int) and value["version"] >= 1
        records += 1
    assert records > 0
