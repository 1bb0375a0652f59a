"""Anomaly windows: a quiet run under a fixed threshold skips the per-point push, with the same result."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from streamml.operators.anomaly import FixedThreshold, RobustZScore, _engine
from streamml.operators.anomaly import windows as windows_mod

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
SEC = timedelta(seconds=1)
SCORES = [0.0, 1.0, 2.0, 3.0, 4.0, 4.5, 9.0]


def logic(score: Any, lateness: int, point_by_point: bool) -> _engine.Shard:
    threshold = FixedThreshold(4.0, close_below=2.0)
    rules = windows_mod._WindowRules(2, 0, 20_000_000, 60_000_000, 300_000_000, True)
    scorer = score if not isinstance(score, str) else None
    driver = score + "_field" if isinstance(score, str) else ""
    family = windows_mod._Family(rules, threshold, scorer, driver)
    if point_by_point:
        # the same fixed levels, but through the threshold's state: no quiet-run shortcut
        family.fixed = None
    fields = (score,) if isinstance(score, str) else score.fields
    timing = _engine.check_timing(
        "q", lateness=lateness * SEC, span=SEC, ttl=None, max_future=None, fields=fields
    )
    io = _engine.RowInput(timing, lambda e: e["t"])
    return _engine.Shard(family, timing, io, None, clock=lambda: 1e9)


def drive(lg: _engine.Shard, batches: list[list[dict]]) -> list:
    out = []
    for batch in batches:
        out.append(lg.on_batch([[("k", e) for e in batch]]))
    out.append(lg.on_eof())
    out.append([lg.family.record(st)["windows"] for st in lg.states.values()])
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
