"""Anomaly windows: a quiet run under a fixed threshold skips the per-point push, with the same result."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from streamml.operators.anomaly import FixedThreshold, RobustZScore
from streamml.operators.anomaly import windows as windows_mod

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
SEC = timedelta(seconds=1)
SCORES = [0.0, 1.0, 2.0, 3.0, 4.0, 4.5, 9.0]


def logic(score: Any, lateness: int, point_by_point: bool) -> windows_mod._WindowsLogic:
    threshold = FixedThreshold(4.0, close_below=2.0)
    rules = windows_mod._WindowRules(2, 0, 20_000_000, 60_000_000, 300_000_000, True)
    if isinstance(score, str):
        extract, driver = windows_mod._score_field(score), score + "_field"
    else:
        extract, driver = windows_mod._field_values(score.fields), ""
    cfg = windows_mod._WindowsConfig(
        rules,
        threshold,
        score if not isinstance(score, str) else None,
        lambda e: e["t"],
        lateness * 1_000_000,
        extract,
        driver,
    )
    out = windows_mod._WindowsLogic(cfg, None)
    if point_by_point:
        # the same fixed levels, but through the threshold's state: no quiet-run shortcut
        out.fixed = None
    return out


def drive(lg: windows_mod._WindowsLogic, batches: list[list[dict]]) -> list:
    out = []
    for batch in batches:
        out.append(lg.on_batch(batch))
    out.append(lg.on_eof())
    out.append(lg.snapshot()[3])
    return out


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 30), st.sampled_from(SCORES), st.floats(-50, 50)),
        min_size=1,
        max_size=120,
    ),
    sizes=st.lists(st.integers(1, 8), min_size=1, max_size=10),
    lateness=st.sampled_from([0, 5]),
)
# a candidate point, a quiet batch (it must drop the candidate), another candidate
@example(steps=[(0, 9.0, 1.0), (1, 0.0, 1.0), (1, 9.0, 1.0)], sizes=[1], lateness=0)
def test_quiet_runs_give_the_same_windows_as_pushing_each_point(steps, sizes, lateness):
    t, events = 0, []
    for dt, s, x in steps:
        t += dt
        events.append({"t": T0 + t * SEC, "s": s, "s_field": "x", "x": x})
    batches, i = [], 0
    for n in sizes * 20:
        if i >= len(events):
            break
        batches.append(events[i : i + n])
        i += n
    for score in ("s", RobustZScore("x", window=60 * SEC, min_points=3)):
        fast = drive(logic(score, lateness, point_by_point=False), batches)
        slow = drive(logic(score, lateness, point_by_point=True), batches)
        assert fast == slow
