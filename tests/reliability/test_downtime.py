"""Event time against the system clock: time spent crashed, or behind, is not idle time."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from streamml.operators import anomaly

pytestmark = pytest.mark.reliability

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
SCORES = [0.1] * 5 + [5, 6, 5] + [0.1] * 2 + [5, 5] + [0.1] * 8  # one window, 5 s to 11 s
EVENTS = [{"t": T0 + timedelta(seconds=i), "score": s} for i, s in enumerate(SCORES)]


def _flow(items: list, windows: list, late: list) -> Dataflow:
    flow = Dataflow("downtime")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(items)), lambda e: "pump")
    found = anomaly.anomaly_windows(
        "anomalies",
        keyed,
        timestamp=lambda e: e["t"],
        threshold=anomaly.FixedThreshold(4.0, close_below=1.0),
        cooldown=timedelta(seconds=3),
        gap=timedelta(seconds=10),
    )
    op.output("windows", found.windows, TestingSink(windows))
    op.output("late", found.late, TestingSink(late))
    return flow


def _spans(windows: list) -> list[tuple]:
    return [(w["start"], w["end"], w["points"], w["closed_by"]) for _, w in windows]


def test_anomaly_windows_after_a_crash_longer_than_the_event_spacing(tmp_path: Path) -> None:
    whole, whole_late = [], []
    run_main(_flow(EVENTS, whole, whole_late))
    assert len(whole) == 1 and not whole_late

    init_db_dir(tmp_path, 1)
    recovery = RecoveryConfig(str(tmp_path))
    aborting = [*EVENTS[:10], TestingSource.ABORT(), *EVENTS[10:]]  # crash inside the window
    windows, late = [], []
    run_main(_flow(aborting, windows, late), epoch_interval=timedelta(0), recovery_config=recovery)
    time.sleep(4)  # down for 4 s: longer than the 1 s between the key's events
    run_main(_flow(aborting, windows, late), epoch_interval=timedelta(0), recovery_config=recovery)
    assert not late  # the readings that waited during the outage are not late
    assert _spans(windows) == _spans(whole)


class _Paced(DynamicSource):
    """Items one at a time, ``pause`` seconds of system time apart: a pipeline behind real time."""

    def __init__(self, items: list, pause: float) -> None:
        self._items, self._pause = items, pause

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _PacedPartition:
        return _PacedPartition(list(self._items), self._pause)


class _PacedPartition(StatelessSourcePartition):
    def __init__(self, items: list, pause: float) -> None:
        self._items, self._pause, self._next = items, pause, 0.0

    def next_batch(self) -> list:
        if not self._items:
            raise StopIteration
        return [self._items.pop(0)]

    def next_awake(self) -> datetime | None:
        return datetime.now(timezone.utc) + timedelta(seconds=self._pause)


def test_in_order_events_are_not_late_when_processing_lags_event_time() -> None:
    """The idle clock closes a quiet key's window, but never makes its next in-order event late.

    Events 50 ms apart in event time arrive 150 ms apart: the key's idle
    watermark runs ahead of its next event every time (the 10M-event soak saw
    2.3 % of events declared late this way before the gate kept lateness to
    event time and released events).
    """
    scores = [5.0, 5.0, 0.1, 0.1, 0.1, 0.1]  # 50 ms apart in event time; 150 ms apart to process
    events = [{"t": T0 + timedelta(milliseconds=50 * i), "score": s} for i, s in enumerate(scores)]
    flow = Dataflow("lagging")
    keyed = op.key_on("key", op.input("in", flow, _Paced(events, 0.15)), lambda e: "pump")
    found = anomaly.anomaly_windows(
        "anomalies",
        keyed,
        timestamp=lambda e: e["t"],
        threshold=anomaly.FixedThreshold(4.0, close_below=1.0),
        min_points=2,
        cooldown=timedelta(milliseconds=100),
    )
    late: list = []
    windows: list = []
    op.output("late", found.late, TestingSink(late))
    op.output("windows", found.windows, TestingSink(windows))
    run_main(flow)
    assert not late, [r.reason for r in late]
    assert len(windows) == 1  # the two high scores, closed by the idle clock or the quiet points
