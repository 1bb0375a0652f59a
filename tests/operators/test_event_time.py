"""KeyedEventTime, the one event-time model: lateness against a row-by-row reference for any
batch cuts, holding and release order, rows held until a due time of the operator's own (what
the joins use), TTL, idle release and max_future with an injected clock, snapshots."""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators._core.event_time import KeyedEventTime
from streamml.operators._core.state import StateVersionError, restore, snapshot


@given(
    st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 50), st.integers(0, 20)), max_size=30),
    st.integers(0, 5),
)
def test_a_row_held_until_a_later_due_time_leaves_once_its_keys_watermark_reaches_it(rows, delay):
    et = KeyedEventTime(max_delay=timedelta(microseconds=delay))
    out: list[int] = []
    newest: dict[str, int] = {}
    for key, t, extra in rows:
        adm = et.admit([key], np.array([t]))
        if len(adm.ok):
            newest[key] = max(newest.get(key, t), t)
            et.hold(None, adm.kid, adm.ts + extra, np.zeros((1, 0)))
        released = et.release().held
        for kid, due in zip(released.kid.tolist(), released.ts.tolist()):
            # released only when the key's watermark has reached the due time
            assert due <= newest[et.key_of(kid)] - delay
            out.append(due)
    held = et.held
    for kid, due in zip(held.kid.tolist(), held.ts.tolist()):
        assert due > newest[et.key_of(kid)] - delay  # and kept until then, even at max_delay=0


def test_idle_release_moves_the_watermark_up_to_the_due_time():
    now = [0.0]
    et = KeyedEventTime(
        max_delay=timedelta(0), idle_release=timedelta(seconds=1), clock=lambda: now[0]
    )
    adm = et.admit(["k"], np.array([100]))
    et.hold(None, adm.kid, adm.ts + 50)
    assert len(et.release().held) == 0
    now[0] = 2.0
    assert et.release().held.ts.tolist() == [150]
    assert et.watermark("k") == 150
    assert et.admit(["k"], np.array([149])).late.tolist() == [0]


US = timedelta(microseconds=1)


class Clock:
    """A wall clock the test moves by hand (seconds)."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def reference(keys, ts, delay, floor=None):
    """Row by row: late iff older than the key's newest accepted time minus ``delay``; a key
    with no accepted row is late iff older than ``floor``."""
    newest: dict[str, int] = {}
    out = []
    for k, t in zip(keys, ts):
        m = newest.get(k)
        is_late = (floor is not None and t < floor) if m is None else t < m - delay
        if not is_late:
            newest[k] = t if m is None else max(m, t)
        out.append(is_late)
    return out, newest


def run_cuts(et, keys, ts, cuts):
    """Admit rows in batches cut at ``cuts``; return the late flags in arrival order."""
    flags = []
    bounds = [0, *sorted(set(cuts)), len(keys)]
    for a, b in zip(bounds, bounds[1:]):
        if a == b:
            continue
        adm = et.admit(keys[a:b], np.array(ts[a:b], dtype=np.int64))
        got = np.zeros(b - a, dtype=bool)
        got[adm.late] = True
        flags.extend(got.tolist())
        et.hold(None, adm.kid, adm.ts)
        et.release()
    return flags


@st.composite
def arrivals(draw):
    n = draw(st.integers(1, 60))
    keys = draw(st.lists(st.sampled_from("abcd"), min_size=n, max_size=n))
    base = sorted(draw(st.lists(st.integers(0, 100), min_size=n, max_size=n)))
    jitter = draw(st.lists(st.integers(-30, 10), min_size=n, max_size=n))
    ts = [b + j for b, j in zip(base, jitter)]
    cuts = draw(st.lists(st.integers(0, n), max_size=8))
    return keys, ts, cuts


@settings(max_examples=300)
@given(data=arrivals(), delay=st.integers(0, 20), as_series=st.booleans())
def test_lateness_matches_the_row_by_row_rule_for_any_batch_cuts(data, delay, as_series):
    keys, ts, cuts = data
    et = KeyedEventTime(max_delay=delay * US)
    k = pl.Series(keys) if as_series else keys
    got = (
        run_cuts(et, k, ts, cuts)
        if not as_series
        else _series_cuts(et, k, ts, cuts)  # the frame path: keys as a polars column
    )
    want, newest = reference(keys, ts, delay)
    assert got == want
    for key, m in newest.items():
        assert et.watermark(key) == m - delay


def _series_cuts(et, keys, ts, cuts):
    flags = []
    bounds = [0, *sorted(set(cuts)), len(keys)]
    for a, b in zip(bounds, bounds[1:]):
        if a == b:
            continue
        adm = et.admit(keys.slice(a, b - a), np.array(ts[a:b], dtype=np.int64))
        got = np.zeros(b - a, dtype=bool)
        got[adm.late] = True
        flags.extend(got.tolist())
    return flags


@settings(max_examples=200)
@given(data=arrivals(), delay=st.integers(0, 20), floor=st.integers(0, 60))
def test_floor_of_forgotten_keys_matches_the_row_by_row_rule(data, delay, floor):
    keys, ts, cuts = data
    et = KeyedEventTime(max_delay=delay * US)
    et.forgotten_max = floor  # as if keys had been forgotten with events up to ``floor``
    assert run_cuts(et, keys, ts, cuts) == reference(keys, ts, delay, floor)[0]


def test_rows_are_held_until_their_watermark_and_released_in_event_time_order():
    et = KeyedEventTime(max_delay=10 * US)
    frame = pl.DataFrame({"i": [0, 1, 2, 3, 4]})
    adm = et.admit(["a", "a", "b", "a", "a"], np.array([5, 3, 7, 3, 16]))
    et.hold(frame[adm.ok], adm.kid, adm.ts)
    out = et.release()  # a's watermark: 6; b's: -3
    assert out.held.frame["i"].to_list() == [1, 3, 0]  # 3 (arrived 2nd), 3 (4th), 5
    assert out.held.ts.tolist() == [3, 3, 5]
    adm = et.admit(["b", "a"], np.array([30, 6]))  # a's row at 6 is exactly the watermark
    assert adm.late.tolist() == []
    et.hold(pl.DataFrame({"i": [5, 6]}), adm.kid, adm.ts)
    assert et.release().held.frame["i"].to_list() == [6, 2]  # a@6, then b@7 (watermark 20)
    assert et.release(eof=True).held.frame["i"].to_list() == [4, 5]
    et.close()
    assert et.watermark("a") == 16 and et.watermark("b") == 30


def test_max_delay_zero_releases_at_once():
    et = KeyedEventTime(max_delay=timedelta(0))
    adm = et.admit(["a", "b", "a"], np.array([5, 1, 4]))
    assert adm.late.tolist() == [2]
    et.hold(None, adm.kid, adm.ts)
    assert et.release().held.ts.tolist() == [1, 5]


def test_idle_release_moves_the_watermark_up_to_what_it_released():
    clock = Clock()
    et = KeyedEventTime(
        max_delay=timedelta(seconds=5), idle_release=timedelta(seconds=2), clock=clock
    )
    s = 1_000_000
    adm = et.admit(["a", "a"], np.array([10 * s, 12 * s]))
    et.hold(None, adm.kid, adm.ts)
    assert len(et.release().held) == 0
    assert et.notify_at() == datetime.fromtimestamp(1_002.0, tz=timezone.utc)
    clock.now = 1_001.9
    assert len(et.release().held) == 0
    clock.now = 1_002.0
    assert et.release().held.ts.tolist() == [10 * s, 12 * s]
    assert et.watermark("a") == 12 * s and et.notify_at() is None
    adm = et.admit(["a", "a"], np.array([11 * s, 12 * s]))  # behind the released 12 s: late
    assert adm.late.tolist() == [0]


def test_future_rows_are_rejected_before_they_move_the_watermark():
    clock = Clock(now=100.0)
    et = KeyedEventTime(max_delay=timedelta(0), max_future=timedelta(seconds=10), clock=clock)
    s = 1_000_000
    adm = et.admit(["a", "a", "a"], np.array([90 * s, 500 * s, 95 * s]))
    assert adm.future.tolist() == [1] and adm.late.tolist() == [] and adm.ok.tolist() == [0, 2]
    errs, lates = adm.rejected("step", lambda i: i)
    assert [(r.error_type, r.original) for r in errs] == [("FutureTimestamp", 1)] and not lates
    assert et.watermark("a") == 95 * s
    clock.now = 600.0  # the same time is no longer in the future
    assert et.admit(["a"], np.array([500 * s])).future.tolist() == []


def test_ttl_forgets_idle_keys_and_their_stale_rows_stay_late():
    s = 1_000_000
    et = KeyedEventTime(
        max_delay=timedelta(0), guard=timedelta(seconds=5), ttl=timedelta(seconds=10)
    )
    seen_gone = []
    for t in range(0, 40):
        keys = ["busy"] + (["idle"] if t == 0 else [])
        adm = et.admit(keys, np.array([t * s] * len(keys)))
        et.hold(None, adm.kid, adm.ts)
        seen_gone += [int(k) for k in et.release().gone]
    assert "idle" not in et.kid_of and seen_gone == [1]
    adm = et.admit(["idle", "idle", "new"], np.array([4 * s, 6 * s, 2 * s]))
    # forgotten at 0 s with a 5 s guard: before 5 s is stale for any key without an accepted row
    assert adm.late.tolist() == [0, 2]
    errs, lates = adm.rejected("s", lambda i: i)
    assert all("TTL" in r.reason for r in lates)
    assert et.kid_of["idle"] == 1  # the forgotten key's id is reused


def test_snapshot_round_trip_keeps_watermarks_held_rows_and_the_ttl_floor():
    clock = Clock()
    s = 1_000_000

    def build(resume=None):
        return KeyedEventTime(
            max_delay=timedelta(seconds=3),
            guard=timedelta(seconds=1),
            ttl=timedelta(seconds=20),
            width=1,
            clock=clock,
            resume=resume,
        )

    rng = np.random.default_rng(3)
    batches = []
    for b in range(30):
        keys = [f"k{rng.integers(4)}" for _ in range(6)] + ([f"once{b}"] if b < 3 else [])
        ts = (b * 2 + rng.integers(-4, 2, len(keys))) * s
        batches.append((keys, ts))

    def feed(et, part):
        out = []
        for keys, ts in part:
            frame = pl.DataFrame({"k": keys, "t": ts})
            adm = et.admit(pl.Series(keys), ts)
            et.hold(frame[adm.ok], adm.kid, adm.ts, np.ones((len(adm.ok), 1)))
            rel = et.release()
            out.append((adm.late.tolist(), rel.held.frame.rows() if len(rel.held) else []))
        return out

    straight = build()
    want = feed(straight, batches)
    first = build()
    got = feed(first, batches[:17])
    record = snapshot("test.event_time", 1, first.snapshot_data())
    feed(first, batches[17:18])  # the snapshot is a copy
    data = restore(pickle.loads(pickle.dumps(record)), kind="test.event_time", version=1)
    got += feed(build(data), batches[17:])
    assert got == want
    assert straight.forgotten_max is not None  # the once-seen keys were forgotten on the way
    with pytest.raises(StateVersionError):
        restore(record, kind="test.other", version=1)


def test_keys_of_any_supported_column_type():
    et = KeyedEventTime(max_delay=timedelta(0))
    a = et.kids(pl.Series(["x", "y", "x"]))
    b = et.kids(pl.Series(["y", "x"], dtype=pl.Categorical))
    c = et.kids(pl.Series([7, 7, 8]))
    x, y = et.kid_of["x"], et.kid_of["y"]
    assert a.tolist() == [x, y, x] and b.tolist() == [y, x] and x != y
    assert c.tolist() == [et.kid_of[7]] * 2 + [et.kid_of[8]] and len(et.kid_of) == 4
    assert et.kids(["x", 8]).tolist() == [x, et.kid_of[8]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_delay": -US}, "max_delay must be >= 0"),
        ({"max_delay": US, "guard": -US}, "guard must be >= 0"),
        ({"max_delay": US, "ttl": timedelta(0)}, "ttl must be > 0"),
        ({"max_delay": US, "idle_release": timedelta(0)}, "idle_release must be > 0"),
        ({"max_delay": US, "max_future": -US}, "max_future must be >= 0"),
    ],
)
def test_misconfiguration_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KeyedEventTime(**kwargs)


def test_idle_advance_moves_a_quiet_keys_watermark_with_the_wall_clock_and_makes_nothing_late():
    now = [1000.0]
    et = KeyedEventTime(max_delay=timedelta(seconds=5), idle_advance=True, clock=lambda: now[0])
    adm = et.admit(["a", "b"], np.array([10_000_000, 10_000_000]))
    et.hold(None, adm.kid, adm.ts)
    kid = adm.kid[:1]
    assert et.marks(kid).tolist() == [5_000_000]
    assert et.wall_time_of(kid, np.array([10_000_000])).tolist() == [1005.0]
    assert et.notify_at().timestamp() == 1005.0
    now[0] = 1002.0
    assert et.marks(kid).tolist() == [7_000_000]
    adm = et.admit(["a"], np.array([6_000_000]))  # behind the clock, not behind the rows: on time
    assert len(adm.ok) == 1 and len(adm.late) == 0
    et.hold(None, adm.kid, adm.ts)
    assert et.release().held.ts.tolist() == [6_000_000]  # the clock passed it
    now[0] = 1005.0
    assert et.release().held.ts.tolist() == [10_000_000, 10_000_000]
    assert et.admit(["a"], np.array([9_999_999])).late.tolist() == [0]  # behind a released row


def test_idle_advance_restarts_from_the_snapshots_watermark_after_a_restore():
    now = [1000.0]
    et = KeyedEventTime(max_delay=timedelta(0), idle_advance=True, width=1, clock=lambda: now[0])
    et.admit(["a"], np.array([1_000_000]))
    now[0] = 1003.0
    data = et.snapshot_data()
    now[0] = 2000.0  # down for 997 s: downtime is not idleness
    again = KeyedEventTime(
        max_delay=timedelta(0), idle_advance=True, width=1, clock=lambda: now[0], resume=data
    )
    assert again.marks(again.kids(["a"])).tolist() == [4_000_000]
    without = KeyedEventTime(max_delay=timedelta(0), clock=lambda: now[0])
    without.admit(["a"], np.array([1_000_000]))
    assert without.marks(without.kids(["a"])).tolist() == [1_000_000]  # off: event time only


@settings(max_examples=100)
@given(
    values=st.lists(st.text(max_size=3), min_size=0, max_size=40),
    collide=st.booleans(),
)
def test_distinct_keys_are_exact_even_when_hashes_collide(values, collide):
    from streamml.operators._core import event_time

    keys = pl.Series(values, dtype=pl.String)
    real = pl.Series.hash
    if collide:  # every value the same hash: the check must catch it
        pl.Series.hash = lambda self, *a, **k: pl.Series([7] * len(self), dtype=pl.UInt64)
    try:
        uniq, inverse = event_time._distinct(keys)
    finally:
        pl.Series.hash = real
    assert uniq.gather(inverse).to_list() == values
    assert sorted(uniq.to_list()) == sorted(set(values))


@pytest.mark.parametrize("held", [0, 3])
def test_a_clock_without_data_columns_restores_with_or_without_held_rows(held: int) -> None:
    """width=0 (no numbers held beside the rows): an empty or a full held set comes back."""
    et = KeyedEventTime(max_delay=timedelta(seconds=10))
    adm = et.admit(["k"] * 3, np.array([1, 2, 3]) * 1_000_000)
    et.hold(None, adm.kid, adm.ts)
    if not held:
        et.release(eof=True)
    back = KeyedEventTime(max_delay=timedelta(seconds=10), resume=et.snapshot_data())
    assert len(back.held) == held
    assert back.held.data.shape == (held, 0)
    assert back.release(eof=True).held.ts.tolist() == [1_000_000, 2_000_000, 3_000_000][:held]
