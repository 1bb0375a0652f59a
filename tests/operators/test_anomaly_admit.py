"""Admission of (key, event) rows: lateness by arrival order only, timestamps exact, keys routed once."""

from __future__ import annotations

import zlib
from datetime import datetime, timedelta, timezone
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators._core.keys import route
from streamml.operators.anomaly import FixedThreshold, _engine
from streamml.operators.anomaly import windows as windows_mod

from streamml.errors import Rejected

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
EST = timezone(timedelta(hours=-5))
SEC = timedelta(seconds=1)


def _shard(lateness_us: int) -> _engine.Shard:
    rules = windows_mod._WindowRules(1, 0, 10**9, 10**10, 10**12, False)
    family = windows_mod._Family(rules, FixedThreshold(4.0), None, "s_field")
    timing = _engine.check_timing(
        "a",
        lateness=timedelta(microseconds=lateness_us),
        span=SEC,
        ttl=None,
        max_future=None,
        fields=("s",),
    )
    return _engine.Shard(
        family, timing, _engine.RowInput(timing, lambda e: e["t"]), None, clock=lambda: 1e9
    )


plain = st.sampled_from([0.5, 3.0, -0.0, 1e308, 7])
weird = st.sampled_from([True, "2.5", float("inf"), float("nan"), None])
value = st.one_of(plain, plain, plain, plain, plain, plain, weird)
point = st.tuples(
    st.sampled_from("ab"),
    st.integers(-3, 6),  # seconds after the previous row of the key: mostly forward
    st.sampled_from([-1, 0, 1]),  # and a microsecond either side
    value,
    st.sampled_from([timezone.utc, EST, None]),  # None: a naive time, rejected
)


def _items(points: list[tuple]) -> list[tuple[str, dict[str, Any]]]:
    clock = {"a": 0, "b": 0}
    out = []
    for key, step, d, s, tz in points:
        clock[key] += step
        t = T0 + timedelta(microseconds=clock[key] * 1_000_000 + d)
        out.append((key, {"t": t.astimezone(tz) if tz else t.replace(tzinfo=None), "s": s}))
    return out


def _reference(items: list, lateness: int) -> tuple[list[int], list[tuple[int, str]]]:
    """Row by row: the late rows' indices (older than the newest accepted of their key minus
    lateness) and the rejected rows' (index, error type)."""
    newest: dict[str, int] = {}
    late, bad = [], []
    for i, (key, e) in enumerate(items):
        s = e["s"]
        if isinstance(s, bool) or not isinstance(s, int | float):
            bad.append((i, "NotANumber"))
            continue
        if s != s or s in (float("inf"), float("-inf")):
            bad.append((i, "NonFinite"))
            continue
        if e["t"].tzinfo is None:
            bad.append((i, "BadTimestamp"))
            continue
        t = (e["t"] - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)
        if key in newest and t < newest[key] - lateness:
            late.append(i)
        else:
            newest[key] = max(newest.get(key, t), t)
    return late, bad


@settings(max_examples=300, deadline=None)
@given(
    points=st.lists(point, max_size=60),
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=5),
    lateness=st.sampled_from([0, 1, 2_000_000, 5_000_001]),
)
def test_late_and_rejected_rows_are_the_row_by_row_ones_at_any_cut(points, sizes, lateness):
    """The vectorised admission of a batch = judging row by row in arrival order, wherever
    the stream is cut into batches."""
    items = _items(points)
    shard = _shard(lateness)
    index = {id(e): i for i, (_, e) in enumerate(items)}
    late, bad, i = [], [], 0
    for n in sizes * (len(items) + 1):
        if i >= len(items):
            break
        out = shard.on_batch([items[i : i + n]])[0][0]
        i += n
        late += [index[id(r.original[1])] for r in out[3]]
        bad += [(index[id(r.original[1])], r.error_type) for r in out[2]]
    want_late, want_bad = _reference(items, lateness)
    assert sorted(late) == want_late
    assert sorted(bad) == want_bad


def test_a_timestamp_is_read_to_the_microsecond():
    shard = _shard(10**12)
    t = datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=EST)
    shard.on_batch([[("k", {"t": t, "s": 1.0}), ("k", {"t": t + 2 * SEC, "s": 1.0})]])
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert shard.et.held.ts.tolist()[0] == (t - epoch) // timedelta(microseconds=1)


def test_a_row_behind_an_earlier_one_of_its_batch_by_more_than_lateness_is_late():
    shard = _shard(2_000_000)
    events = [{"t": T0 + timedelta(seconds=s), "s": 1.0} for s in (0, 3, 3, 3, 3, 3, 3, 0.9)]
    out = shard.on_batch([[("k", e) for e in events]])[0][0]
    assert [r.original[1] for r in out[3]] == [events[-1]] and out[2] == []
    assert len(shard.et.held) == 6  # and the row at 0 s was released: 3 s - 2 s passed it


# ---------------------------------------------------------------- routing rows to shards

item = st.one_of(
    st.tuples(st.sampled_from(["a", "b", "c", "é", "\ud800"]), st.integers()),
    st.tuples(st.integers(0, 2), st.integers()),  # key not a str
    st.tuples(st.just("a"), st.integers(), st.integers()),  # not a pair
    st.just(["a", 1]),  # a list, not a tuple
    st.just((["a"], 1)),  # unhashable key
    st.integers(),
)


@settings(max_examples=300, deadline=None)
@given(items=st.lists(item, max_size=40), shards=st.sampled_from([1, 2, 5]))
def test_rows_are_routed_once_each_on_the_frames_shards(items, shards):
    out = _engine.shard_rows("s", shards)(items)
    parts = [x for x in out if not isinstance(x, Rejected)]
    bad = [x for x in out if isinstance(x, Rejected)]
    good = [x for x in items if isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str)]
    usable = good  # a lone surrogate is a key too (hashed as its UTF-8 text with surrogates)
    routed = [x for _, part in parts for x in part]
    assert sorted(map(repr, routed)) == sorted(map(repr, usable))
    assert [r.original for r in bad if r.error_type == "BadItem"] == [
        x for x in items if not any(x is g for g in good)
    ]
    assert all(r.error_type == "BadItem" for r in bad)
    for name, part in parts:
        assert [x for x in usable if x[0] in {k for k, _ in part}] == part  # order kept
        texts = [k for k, _ in part if k != "\ud800"]
        if texts:  # the same shard as a frame's row with that key
            frame = pl.DataFrame({"k": texts})
            assert [s for s, _ in route(frame, key="k", shards=shards, step_id="s")[0]] == [name]
        if shards > 1:
            crc = {str(zlib.crc32(k.encode("utf-8", "surrogatepass")) % shards) for k, _ in part}
            assert crc == {name}


@pytest.mark.parametrize("shards", [1, 3])
def test_an_empty_batch_gives_no_shard_work(shards):
    assert _engine.shard_rows("s", shards)([]) == []
