"""The whole-batch admission and grouping fast paths against their event-by-event forms."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from operator import itemgetter
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.anomaly import _clock, _shard
from streamml.operators.anomaly.windows import _score_field

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
EST = timezone(timedelta(hours=-5))

plain = st.sampled_from([0.5, 3.0, -0.0, 1e308])
weird = st.sampled_from([7, True, "2.5", np.float64(2.0), float("inf")])
value = st.one_of(plain, plain, plain, plain, plain, plain, weird)
point = st.tuples(
    st.integers(-3, 6),  # seconds after the previous event of the batch: mostly forward
    st.sampled_from([-1, 0, 1]),  # and a microsecond either side
    value,
    value,
    st.sampled_from([timezone.utc, EST]),
)


def _events(start: int, points: list[tuple]) -> list[dict[str, Any]]:
    out, k = [], start
    for step, d, s, u, tz in points:
        k += step
        t = T0 + timedelta(microseconds=k * 1_000_000 + d)
        out.append({"t": t.astimezone(tz), "s": s, "u": u})
    return out


good = st.builds(
    _events,
    st.integers(-20, 20),
    st.one_of(st.lists(point, max_size=7), st.lists(point, min_size=8, max_size=30)),
)
bad = st.sampled_from(
    [
        {"t": T0, "s": float("nan")},
        {"t": T0, "s": "x"},
        {"t": datetime(2026, 3, 1), "s": 1.0},  # naive
        {"s": 1.0},  # no time
        {"t": "10:00", "s": 1.0},  # not a datetime
    ]
)


def _gate(lateness: int, seen: int | None, released: int | None) -> _clock._Gate:
    gate = _clock._Gate(lateness)
    if seen is not None:
        gate.max_ts = seen
        gate.wm = seen - lateness
        gate.released = min(released, gate.wm) if released is not None else _clock._MIN
    return gate


def _state(gate: _clock._Gate) -> tuple:
    # repr: 7 == 7.0 and np.float64(2.0) == 2.0, but the scorer must get plain floats
    return gate.max_ts, gate.wm, gate.sys_at_max, repr(gate.pending), gate.released


@settings(max_examples=600, deadline=None)
@given(
    batches=st.lists(
        st.tuples(
            good,
            st.lists(st.tuples(st.integers(0, 25), bad), max_size=1),
        ),
        min_size=1,
        max_size=5,
    ),
    lateness=st.sampled_from([0, 1, 2_000_000, 5_000_001]),
    seen=st.one_of(st.none(), st.integers(-40, 40).map(lambda k: k * 1_000_000)),
    released=st.one_of(st.none(), st.integers(-40, 40).map(lambda k: k * 1_000_000 - 1)),
    reader=st.sampled_from(["field", "one", "two", "none"]),
)
def test_admit_is_admit_each(batches, lateness, seen, released, reader):
    """Same rejections, late records, pending events, watermark and idle clock, batch after batch."""
    now = [10**15]
    stamp = itemgetter("t")
    extract, read_all = {
        "field": (_score_field("s"), _clock._plain_reader(("s",), rows=False)),
        "one": (_clock._field_values(("s",)), _clock._plain_reader(("s",), rows=True)),
        "two": (_clock._field_values(("s", "u")), _clock._plain_reader(("s", "u"), rows=True)),
        "none": (_score_field("s"), None),
    }[reader]
    for events, bad_events in batches:  # a batch with a bad event goes the careful way
        for at, e in bad_events:
            events.insert(at, e)
    batches = [events for events, _ in batches]
    fast, each = _gate(lateness, seen, released), _gate(lateness, seen, released)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_clock, "_now_us", lambda: now[0])
        for i, batch in enumerate(batches):
            now[0] += 1
            got = _clock._admit(fast, batch, stamp, extract, read_all)
            want = _clock._admit_each(each, batch, stamp, extract)
            assert got == want
            assert _state(fast) == _state(each)
            for g in (fast, each):  # release sorts only a gate that says it may be out of order
                stamps = [p[0] for p in g.pending]
                assert g.mixed or stamps == sorted(stamps)
            if i % 2 and fast.pending:  # release half: later events older than those are late
                mid = sorted(fast.pending, key=lambda p: p[0])[len(fast.pending) // 2][0]
                for g in (fast, each):
                    g.wm = max(g.wm, mid)
                    g.release()


def test_admit_reads_a_timestamp_to_the_microsecond():
    gate = _clock._Gate(0)
    t = datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=EST)
    _clock._admit(gate, [{"t": t, "s": 1.0}], lambda e: e["t"], _score_field("s"))
    assert gate.pending[0][0] == (t - _clock._EPOCH) // timedelta(microseconds=1)


# ---------------------------------------------------------------- grouping by key

item = st.one_of(
    st.tuples(st.sampled_from(["a", "b", "c", "é", "\ud800"]), st.integers()),
    st.tuples(st.integers(0, 2), st.integers()),  # key not a str
    st.tuples(st.just("a"), st.integers(), st.integers()),  # not a pair
    st.just(["a", 1]),  # a list, not a tuple
    st.just((["a"], 1)),  # unhashable key
    st.integers(),
)


def _reference(items: list[Any]) -> tuple[dict[str, list[Any]], list[Any]]:
    by_key: dict[str, list[Any]] = {}
    bad: list[Any] = []
    for x in items:
        if isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str):
            by_key.setdefault(x[0], []).append(x[1])
        else:
            bad.append(x)
    return by_key, bad


@settings(max_examples=300, deadline=None)
@given(items=st.lists(item, max_size=40), shards=st.sampled_from([1, 2, 5]))
def test_grouping_by_shard_and_key(items, shards):
    parts = _shard._group_by_shard(shards)(items)
    want_keys, want_bad = _reference(items)
    assert [name for name, _ in parts] == sorted((name for name, _ in parts), key=int)
    got_keys = {k: v for _, (part, _) in parts for k, v in part.items()}
    assert got_keys == want_keys
    assert [x for _, (_, bad) in parts for x in bad] == want_bad
    assert all(bad == [] for name, (_, bad) in parts if name != "0")
    assert all(part or bad for _, (part, bad) in parts)
    for name, (part, _) in parts:  # a key always lands in the same shard
        for key in part:
            assert _shard._group_by_shard(shards)([(key, 0)])[0][0] == name


@pytest.mark.parametrize("shards", [1, 3])
def test_an_empty_batch_gives_no_shard_work(shards):
    assert _shard._group_by_shard(shards)([]) == []


def test_an_event_older_than_the_newest_released_is_late_by_one_microsecond():
    stamp, extract = (lambda e: e["t"]), _score_field("s")
    for fn in (_clock._admit, _clock._admit_each):
        gate = _clock._Gate(5_000_000)
        at_floor = {"t": T0 + timedelta(microseconds=10_000_000), "s": 1.0}
        below = {"t": T0 + timedelta(microseconds=9_999_999), "s": 1.0}
        base = (T0 - _clock._EPOCH) // timedelta(microseconds=1)
        # released ahead of max_ts - lateness (an idle watermark released it)
        gate.max_ts, gate.wm, gate.released = (
            base + 10_000_000,
            base + 10_000_000,
            base + 10_000_000,
        )
        n = _clock._SMALL_BATCH  # a batch large enough for the whole-batch path
        assert fn(gate, [at_floor] * n, stamp, extract) == []
        late = fn(gate, [below] * n, stamp, extract)
        assert [type(x) for x in late] == [_clock._Late] * n


@pytest.mark.parametrize(
    "fields, rows, extract",
    [
        (("s",), False, _score_field("s")),
        (("s",), True, _clock._field_values(("s",))),
        (("s", "u"), True, _clock._field_values(("s", "u"))),
    ],
)
def test_plain_reader_reads_plain_floats_as_extract_and_raises_on_anything_else(
    fields, rows, extract
):
    read = _clock._plain_reader(fields, rows)
    plain = [{"s": 0.5, "u": -0.0}, {"s": 1e300, "u": 2.0}]
    assert read(plain) == [extract(e) for e in plain]
    assert repr(read(plain)) == repr([extract(e) for e in plain])
    for odd in (7, True, "2.5", np.float64(2.0), float("inf"), float("nan"), None):
        for name in fields:
            with pytest.raises(Exception):  # noqa: B017 - any exception sends the batch event by event
                read(plain + [{"s": 1.0, "u": 1.0, name: odd}])
    with pytest.raises(Exception):  # noqa: B017
        read(plain + [{"u": 1.0}])
    with pytest.raises(Exception):  # noqa: B017 - a sum that overflows: the careful path decides
        read([{"s": 1e308, "u": 1e308}, {"s": 1e308, "u": 1e308}])


def test_an_event_behind_an_earlier_one_of_its_batch_by_more_than_lateness_is_late():
    events = [{"t": T0 + timedelta(seconds=s), "s": 1.0} for s in (0, 3, 3, 3, 3, 3, 3, 0.9)]
    gate = _clock._Gate(2_000_000)
    (late,) = _clock._admit(gate, events, itemgetter("t"), _score_field("s"))
    assert late[1] is events[-1] and [p[1] for p in gate.pending] == events[:-1]


@pytest.mark.parametrize("admit", [_clock._admit, _clock._admit_each])
def test_a_batch_starting_before_the_pending_events_is_sorted_on_release(admit):
    gate = _clock._Gate(5_000_000)
    batch = lambda first: [{"t": T0 + timedelta(seconds=first + i), "s": 1.0} for i in range(8)]  # noqa: E731
    admit(gate, batch(0), itemgetter("t"), _score_field("s"))
    assert not gate.mixed
    admit(gate, batch(3), itemgetter("t"), _score_field("s"))  # 3..10 s after 0..7 s: on time
    assert gate.mixed
    gate.wm = gate.max_ts
    stamps = [p[0] for p in gate.release()]
    assert stamps == sorted(stamps) and len(stamps) == 16 and not gate.mixed
