"""inactivity on ``(key, event)`` rows: the brute-force reference and the frame path, bad items,
the wall clock, and a snapshot shared with the frame path."""

from __future__ import annotations

import pickle
from collections import Counter
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators._core.event_time import KeyedEventTime
from streamml.operators.anomaly import inactivity
from streamml.operators.anomaly import silence as silence_mod

from streamml.testing import run_operator
from streamml.testing.strategies import T0, bad_events, keyed_events
from tests.operators.test_anomaly_inactivity import _reference

MIN = timedelta(minutes=1)
FROZEN = 1e9  # the wall clock stands still: only event time moves the watermarks


def _ts(event: dict[str, Any]) -> datetime:
    return event["ts"]


def _rows(items: list[Any], batch: int, **kw: Any) -> Any:
    """The run's outputs, with the alerts as ``oks``."""
    out = run_operator(
        lambda up: inactivity("quiet", up, timestamp=_ts, clock=lambda: FROZEN, **kw),
        items,
        batch_size=batch,
    )
    out.oks = out.other.pop("alerts")
    return out


def _frames(items: list[tuple[str, dict]], batch: int, **kw: Any) -> Any:
    frames = [
        pl.DataFrame(
            {"k": [k for k, _ in part], "ts": [e["ts"] for _, e in part]},
            schema={"k": pl.String, "ts": pl.Datetime("us", "UTC")},
        )
        for part in (items[i : i + batch] for i in range(0, len(items), batch))
    ]
    out = run_operator(
        lambda up: inactivity("quiet", up, key="k", timestamp="ts", clock=lambda: FROZEN, **kw),
        frames,
    )
    out.oks = out.other.pop("alerts")
    return out


def _minutes(t: datetime) -> int:
    return round((t - T0) / MIN)


@settings(max_examples=30, deadline=None)
@given(
    keyed_events(keys="abcd", fields=(), max_delay=3 * MIN, step=MIN, max_size=60),
    st.integers(1, 20),
    st.integers(1, 12),
)
def test_rows_match_bruteforce_and_the_frame_path(stream, after, batch):
    kw = dict(after=after * MIN, lateness=stream.max_delay)
    got = _rows(stream.items, batch, **kw)
    assert got.errs == []
    alerts = [(k, _minutes(a["last_seen"])) for k, a in got.oks]
    assert all(k == a["key"] and a["silent_at"] - a["last_seen"] == after * MIN for k, a in got.oks)
    assert len(alerts) == len(set(alerts))  # each silence once
    times: dict[str, list[int]] = {}
    for k, e in stream.on_time():
        times.setdefault(k, []).append(_minutes(e["ts"]))
    want = _reference(times, after, 3) if times else set()
    assert set(alerts) == want
    # late: the items not on time (a duplicate may be on time once, then late)
    late = Counter(map(repr, stream.items)) - Counter(map(repr, stream.on_time()))
    assert Counter(repr(r.original) for r in got.late) == late
    assert all(r.error_type == "Late" for r in got.late)
    # the frame path, on the same rows cut into frames of the same size
    framed = _frames(stream.items, batch, **kw)
    assert sorted((a["key"], a["last_seen"]) for a in framed.oks) == sorted(
        (a["key"], a["last_seen"]) for _, a in got.oks
    )
    assert len(framed.late) == len(got.late)


def _readable(item: Any) -> bool:
    """Whether inactivity, which reads only the key and the time, can take ``item``."""
    if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
        return False
    ts = item[1].get("ts") if isinstance(item[1], dict) else None
    return isinstance(ts, datetime) and ts.utcoffset() is not None


def _kind(item: Any) -> str:
    """The rejection inactivity owes a bad item: it reads only the key and the time."""
    if not (isinstance(item, tuple) and len(item) == 2):
        return "BadItem"
    return "BadKey" if not isinstance(item[0], str) else "BadTimestamp"


@settings(max_examples=30, deadline=None)
@given(
    keyed_events(keys="ab", fields=(), max_delay=2 * MIN, step=MIN, max_size=30, late=False),
    # less the items whose only flaw is a field inactivity does not read
    st.lists(
        st.tuples(st.integers(0, 40), bad_events().filter(lambda i: not _readable(i))),
        min_size=1,
        max_size=6,
    ),
    st.integers(1, 8),
)
def test_bad_items_are_rejected_once_and_change_nothing(stream, bad, batch):
    items = list(stream.items)
    for at, item in sorted(bad, key=lambda b: b[0], reverse=True):
        items.insert(min(at, len(items)), item)
    kw = dict(after=5 * MIN, lateness=stream.max_delay)
    clean = _rows(stream.items, batch, **kw)
    got = _rows(items, batch, **kw)  # and no crash
    assert sorted(map(repr, got.oks)) == sorted(map(repr, clean.oks))
    assert [repr(r.original) for r in got.late] == [repr(r.original) for r in clean.late]
    assert sorted(repr(r.original) for r in got.errs) == sorted(repr(i) for _, i in bad)
    assert sorted(r.error_type for r in got.errs) == sorted(_kind(i) for _, i in bad)


def test_a_frame_among_rows_is_a_bad_item():
    frame = pl.DataFrame({"k": ["a"], "ts": [T0]})
    items = [("a", {"ts": T0}), frame, ("a", {"ts": T0 + 9 * MIN}), ("b", {"ts": T0 + 30 * MIN})]
    got = _rows(items, 4, after=5 * MIN)
    assert [r.error_type for r in got.errs] == ["BadItem"]
    assert got.errs[0].original is frame
    assert [(k, _minutes(a["last_seen"])) for k, a in got.oks] == [("a", 0), ("a", 9)]


def _state(now: list[float], rows: bool, resume: Any = None) -> Any:
    et = partial(KeyedEventTime, max_delay=timedelta(0), idle_advance=True, clock=lambda: now[0])
    columns = (None, None) if rows else ("ts", "k")
    return silence_mod._Silences(
        "s", *columns, 60_000_000, lambda r: et(resume=r), resume, rows=rows
    )


def _part(pairs: list[tuple[str, datetime]], rows: bool) -> Any:
    """One input part of the state: a frame's key and time columns, or rows' (keys, times, items)."""
    if not rows:
        return pl.DataFrame({"k": [k for k, _ in pairs], "ts": [t for _, t in pairs]})
    items = [(k, {"ts": t}) for k, t in pairs]
    return silence_mod._row_times("s", _ts)(items)[0][1]


def test_wall_clock_alerts_a_quiet_key_as_a_pair():
    now = [FROZEN]
    state = _state(now, rows=True)
    at = datetime.fromtimestamp(FROZEN, tz=timezone.utc)
    assert state.on_batch([_part([("a", at)], rows=True)])[0][0] == ([], [], [])
    now[0] += 61
    alerts, _, _ = state.on_notify()[0][0]
    assert [(k, a["key"], a["last_seen"]) for k, a in alerts] == [("a", "a", at)]


def test_a_frame_paths_snapshot_resumes_on_rows():
    """The state keeps keys and times only: one record for both paths."""
    now = [FROZEN]
    times = {"a": [0, 1, 9, 10, 30, 31], "b": [0, 20, 21, 40], "c": [2, 3, 50, 60]}
    pairs = sorted(((k, T0 + t * MIN) for k, ts in times.items() for t in ts), key=lambda p: p[1])
    parts = [pairs[i : i + 4] for i in range(0, len(pairs), 4)]
    whole = _state(now, rows=False)
    want = [(a["key"], a) for p in parts for a in whole.on_batch([_part(p, False)])[0][0][0]]
    first = _state(now, rows=False)
    got = [(a["key"], a) for p in parts[:2] for a in first.on_batch([_part(p, False)])[0][0][0]]
    snap = pickle.loads(pickle.dumps(first.snapshot()))
    second = _state(now, rows=True, resume=snap)
    got += [x for p in parts[2:] for x in second.on_batch([_part(p, True)])[0][0][0]]
    assert got == want and len(want) >= 3
