"""The generated anomaly benchmark set and the window scoring function."""

from __future__ import annotations

from datetime import timedelta
from operator import attrgetter
from types import SimpleNamespace

import numpy as np

from streamml.evaluation import KINDS, TrueWindow, score_windows, sensor_set


def test_sensor_set_is_deterministic_labelled_and_anomalies_are_real():
    a = sensor_set(keys=3, days=3, seed=4)
    assert a == sensor_set(keys=3, days=3, seed=4)
    assert a.events != sensor_set(keys=3, days=3, seed=5).events
    assert len(a.events) == 3 * 3 * 1440 and len(a.truths) == 12
    assert {t.kind for t in a.truths} == set(KINDS)
    assert [e["time"] for e in a.events] == sorted(e["time"] for e in a.events)
    first = a.events[0]["time"]
    for key in {t.key for t in a.truths}:
        mine = sorted((t for t in a.truths if t.key == key), key=lambda t: t.start)
        assert mine[0].start >= first + timedelta(days=1)  # the warm-up is clean
        assert all(x.end + timedelta(hours=2) <= y.start for x, y in zip(mine, mine[1:]))
        # inside a true window the signal departs from its neighbourhood
        xs = np.array([e["value"] for e in a.events if e["sensor"] == key])
        for t in mine:
            i, j = (t.start - first) // a.step, (t.end - first) // a.step
            before = xs[i - 120 : i]
            dev = np.abs(xs[i:j] - np.median(before)) / np.std(np.diff(before)) * np.sqrt(2)
            assert dev.max() > 3, t


def test_score_windows_counts_overlaps_delays_and_kinds():
    t0 = sensor_set(keys=1, days=3, seed=0).events[0]["time"]
    m = timedelta(minutes=1)
    truths = [
        TrueWindow("a", "spike", t0, t0 + 10 * m),
        TrueWindow("a", "drift", t0 + 100 * m, t0 + 200 * m),
        TrueWindow("b", "drift", t0, t0 + 30 * m),
    ]
    found = [
        {"window_id": "1", "key": "a", "start": t0 - 5 * m, "end": t0},  # touches the start: a hit
        {"window_id": "2", "key": "a", "start": t0 + 150 * m, "end": t0 + 160 * m},
        {"window_id": "3", "key": "a", "start": t0 + 170 * m, "end": t0 + 171 * m},
        {"window_id": "4", "key": "b", "start": t0 + 31 * m, "end": t0 + 40 * m},  # after: a miss
    ]
    alerts = [{"window_id": "2", "opened_at": t0 + 152 * m}]
    s = score_windows(found, truths, alerts)
    assert (s.found, s.hits, s.detected_true) == (4, 3, 2)
    assert s.precision == 0.75 and s.recall == 2 / 3
    assert s.median_delay == (timedelta(0) + 52 * m) / 2  # early detection counts as zero
    assert s.recall_by_kind == {"drift": 0.5, "spike": 1.0}
    assert s.median_delay_by_kind["drift"] == 52 * m
    assert s.as_dict()["median_delay_s_by_kind"]["spike"] == 0.0
    empty = score_windows([], truths)
    assert (empty.precision, empty.recall, empty.median_delay) == (0.0, 0.0, None)


def test_score_windows_accepts_other_truth_types():
    t0 = sensor_set(keys=1, days=3, seed=0).events[0]["time"]
    truth = SimpleNamespace(sensor_id="s1", start=t0, end=t0 + timedelta(minutes=5))
    found = [{"key": "s1", "start": t0, "end": t0}]
    s = score_windows(found, [truth], truth_key=attrgetter("sensor_id"))
    assert s.recall == 1.0 and s.recall_by_kind == {}
