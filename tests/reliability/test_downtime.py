"""Time spent crashed is not idle time: resuming after a pause gives the uninterrupted results."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
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
