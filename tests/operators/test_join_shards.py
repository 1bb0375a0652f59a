"""The joins' batched timestamps: the one-getter fast path against the general path."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from streamml.operators.join._shards import LEFT, RIGHT, never, timestamps

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def ts(e: dict[str, Any]) -> datetime:
    return e["ts"]


def ts_again(e: dict[str, Any]) -> datetime:  # the same, but another function: general path
    return e["ts"]


def micros(dt: datetime) -> int:
    d = dt - EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


_TIMES = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(timezone.utc)
)
_VALUES = st.one_of(
    _TIMES.map(lambda t: {"ts": t}),
    st.just({"ts": "2024-01-01"}),  # not a datetime
    st.just({"ts": datetime(2024, 1, 1)}),  # naive
    st.just({}),  # no timestamp
)


@given(st.lists(st.tuples(st.sampled_from([LEFT, RIGHT]), st.text(max_size=3), _VALUES)))
def test_one_getter_fast_path_matches_the_general_path(batch) -> None:
    fast_errs: list = []
    general_errs: list = []
    fast = timestamps("j", batch, (ts, ts), never, fast_errs)
    general = timestamps("j", batch, (ts, ts_again), never, general_errs)
    assert fast == general
    assert [(r.step_id, r.error_type, r.reason, r.original) for r in fast_errs] == [
        (r.step_id, r.error_type, r.reason, r.original) for r in general_errs
    ]
    good = [(s, k, v) for s, k, v in batch if isinstance(v.get("ts"), datetime) and v["ts"].tzinfo]
    assert fast == [(s, k, v, micros(v["ts"])) for s, k, v in good]


def test_skipped_items_get_zero_without_a_getter_call() -> None:
    one = {"ts": EPOCH + timedelta(seconds=1)}
    batch = [(LEFT, "a", one), (RIGHT, "b", one)]
    got = timestamps("j", batch, (ts, ts), lambda side, v: side == RIGHT, [])
    assert [t for *_, t in got] == [1_000_000, 0]
