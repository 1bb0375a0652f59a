"""The anomaly operators' event time: event time and released rows decide lateness, not the idle clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from streamml.operators.anomaly import FixedThreshold, _engine
from streamml.operators.anomaly import windows as windows_mod

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
SEC = timedelta(seconds=1)


def _shard(now: list[float], lateness: timedelta, resume: object = None) -> _engine.Shard:
    rules = windows_mod._WindowRules(1, 0, 10**9, 10**10, 10**12, False)
    family = windows_mod._Family(rules, FixedThreshold(4.0), None, "x_field")
    timing = _engine.check_timing(
        "g", lateness=lateness, span=SEC, ttl=None, max_future=None, fields=("x",)
    )
    io = _engine.RowInput(timing, lambda e: e["t"])
    return _engine.Shard(family, timing, io, resume, clock=lambda: now[0])


def _send(shard: _engine.Shard, *seconds: float) -> list[float]:
    """Send rows of key "k" at these seconds; the seconds of those that were late."""
    out = shard.on_batch([[("k", {"t": T0 + s * SEC, "x": 1.0}) for s in seconds]])[0][0]
    return [(r.original[1]["t"] - T0) / SEC for r in out[3]]


def test_an_idle_clock_ahead_of_the_next_row_does_not_make_it_late() -> None:
    now = [1e9]
    shard = _shard(now, timedelta(0))
    assert _send(shard, 10) == []
    now[0] += 90  # the idle clock ran 90 s ahead while the key was quiet
    assert int(shard.et.marks(shard.et.kids(["k"]))[0]) == (T0 + 100 * SEC).timestamp() * 1e6
    assert _send(shard, 20) == []  # in order: on time
    assert _send(shard, 15) == [15]  # older than a row already taken: late


def test_a_row_older_than_one_the_clock_released_is_late_by_one_microsecond() -> None:
    now = [1e9]
    shard = _shard(now, 5 * SEC)
    _send(shard, 10)
    assert len(shard.et.held) == 1
    now[0] += 5  # the clock moves the quiet key's watermark to the held row: released
    shard.on_notify()
    assert len(shard.et.held) == 0
    assert _send(shard, 10) == []  # at the released row's time: on time
    assert _send(shard, 10 - 1e-6) == [10 - 1e-6]


def test_lateness_allows_out_of_order_rows_within_its_bound() -> None:
    now = [1e9]
    shard = _shard(now, 5 * SEC)
    assert _send(shard, 10, 7, 4) == [4]  # 4 s is behind 10 s - 5 s
    assert sorted(shard.et.held.ts.tolist()) == [
        int((T0 + s * SEC).timestamp() * 1e6) for s in (7, 10)
    ]
    out = shard.on_eof()[0][0]
    assert out[3] == [] and len(shard.et.held) == 0


def test_a_version_0_gate_without_released_restores_with_the_watermark_as_floor() -> None:
    us = int(T0.timestamp() * 1e6)
    windows_v0 = (us + 50_000_000, False, 0, 0, 0, 0.0, 0.0, 0, None, None, 0, 0.0, 0, ())
    old = {"k": ((us + 50_000_000, us + 50_000_000, 0, ()), None, None, windows_v0)}
    now = [1e9]
    shard = _shard(now, timedelta(0), resume=old)
    assert _send(shard, 40) == [40]
    assert _send(shard, 50) == []
    again = _shard(now, timedelta(0), resume=shard.snapshot())
    assert again.et.watermark("k") == shard.et.watermark("k") == us + 50_000_000
    assert again.family.record(again.states[0]) == shard.family.record(shard.states[0])
