"""The anomaly gate's lateness: event time and released events decide it, not the idle clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from streamml.operators.anomaly._clock import _admit, _Gate, _Late

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
EPOCH_US = int(T0.timestamp()) * 1_000_000


def _events(*seconds: float) -> list[dict]:
    return [{"t": T0 + timedelta(seconds=s), "x": 1.0} for s in seconds]


def _admit_all(gate: _Gate, *seconds: float) -> list:
    return _admit(gate, _events(*seconds), lambda e: e["t"], lambda e: e["x"])


def _released_seconds(gate: _Gate) -> list[float]:
    return [(ts - EPOCH_US) / 1e6 for ts, _, _ in gate.release()]


def test_an_idle_clock_ahead_of_the_next_event_does_not_make_it_late() -> None:
    gate = _Gate(lateness=0)
    assert _admit_all(gate, 10) == []
    assert _released_seconds(gate) == [10]
    gate.wm = EPOCH_US + 100 * 1_000_000  # the idle clock ran 90 s ahead while the key was quiet
    assert _admit_all(gate, 20) == []  # in order: on time
    assert _released_seconds(gate) == [20]
    [late] = _admit_all(gate, 15)  # older than an event already released: late
    assert isinstance(late, _Late) and "behind the watermark" in late[0]


def test_lateness_allows_out_of_order_events_within_its_bound() -> None:
    gate = _Gate(lateness=5 * 1_000_000)
    problems = _admit_all(gate, 10, 7, 4)
    assert [type(p) for p in problems] == [_Late]  # 4 s is behind 10 s - 5 s
    assert gate.release() == []  # the watermark (5 s) has passed neither
    gate.wm = EPOCH_US + 60 * 1_000_000
    assert _released_seconds(gate) == [7, 10]


def test_a_snapshot_without_released_restores_with_the_watermark_as_floor() -> None:
    gate = _Gate(lateness=0)
    old_format = (EPOCH_US + 50 * 1_000_000, EPOCH_US + 50 * 1_000_000, 0, ())
    gate.restore(old_format)
    [late] = _admit_all(gate, 40)
    assert isinstance(late, _Late)
    assert _admit_all(gate, 50) == []
    restored = _Gate(lateness=0)
    restored.restore(gate.snapshot())
    assert restored.released == gate.released and restored.max_ts == gate.max_ts
