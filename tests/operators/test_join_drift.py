"""drift: PSI per window against a reference, alerts, errors and late events."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.join import drift, psi

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


def brute_psi(reference, current, bins):
    """PSI written out: quantile edges, per-bin shares with a 1e-4 floor."""
    ref = sorted(reference)
    edges = sorted(set(np.quantile(ref, [i / bins for i in range(1, bins)])))

    def shares(values):
        counts = [0] * (len(edges) + 1)
        for v in values:
            counts[sum(1 for e in edges if v >= e)] += 1
        return [max(c / max(len(values), 1), 1e-4) for c in counts]

    e, a = shares(reference), shares(current)
    return sum((ai - ei) * np.log(ai / ei) for ai, ei in zip(a, e, strict=True))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(-20, 20), min_size=1, max_size=60),
    st.lists(st.integers(-20, 20), max_size=60),
    st.integers(2, 10),
)
def test_psi_matches_written_out_formula(reference, current, bins):
    assert psi(reference, current, bins=bins) == pytest.approx(
        brute_psi(reference, current, bins), abs=1e-9
    )


def test_psi_is_zero_for_the_same_distribution_and_grows_with_shift():
    rng = np.random.default_rng(1)
    ref = rng.normal(0, 1, 20_000)
    shifts = [psi(ref, rng.normal(mu, 1, 20_000)) for mu in (0.0, 0.25, 0.5, 1.0)]
    assert shifts[0] < 0.01
    assert shifts == sorted(shifts)


def _run(events, **kwargs):
    flow = Dataflow("drift_test")
    out = drift(
        "drift",
        op.input("in", flow, TestingSource(events, batch_size=50)),
        value=lambda e: e["x"],
        ts=lambda e: e["ts"],
        window=HOUR,
        **kwargs,
    )
    got = {name: [] for name in ("psi", "alerts", "errs", "late")}
    for name, sink in got.items():
        op.output(name, getattr(out, name), TestingSink(sink))
    run_main(flow)
    return got


def test_drift_against_given_reference_per_key_and_window():
    rng = np.random.default_rng(2)
    ref = rng.normal(0, 1, 2000)
    events = []
    for hour, mu in enumerate([0.0, 0.0, 2.0]):
        xs = rng.normal(mu, 1, 300)
        for i, x in enumerate(xs):
            t = T0 + hour * HOUR + timedelta(seconds=i * 10)
            events.append(("v1", {"x": float(x), "ts": t}))
            events.append(("v2", {"x": float(-x), "ts": t}))
    events.sort(key=lambda kv: kv[1]["ts"])
    got = _run(events, reference=ref)
    by_key = {}
    for key, record in got["psi"]:
        by_key.setdefault(key, []).append(record)
    for key in ("v1", "v2"):
        records = by_key[key]
        assert [r["window_start"] for r in records] == [T0, T0 + HOUR, T0 + 2 * HOUR]
        assert [r["count"] for r in records] == [300, 300, 300]
        assert [r["alert"] for r in records] == [False, False, True]
        hour2 = [e["x"] for k, e in events if k == key and e["ts"] >= T0 + 2 * HOUR]
        assert records[2]["psi"] == pytest.approx(psi(ref, hour2))
    assert sorted(k for k, _ in got["alerts"]) == ["v1", "v2"]


def test_bad_values_go_to_errs_and_late_events_to_late():
    events = [
        ("k", {"x": 1.0, "ts": T0}),
        ("k", {"x": float("nan"), "ts": T0}),
        ("k", {"x": "abc", "ts": T0}),
        ("k", {"x": 1.0, "ts": datetime(2024, 1, 1)}),
        ("k", {"x": 2.0, "ts": T0 + 3 * HOUR}),
        ("k", {"x": 3.0, "ts": T0}),  # its window closed when 03:00 arrived
    ]
    got = _run(events)
    assert sorted(r.error_type for r in got["errs"]) == ["NonFinite", "TypeError", "ValueError"]
    assert len(got["late"]) == 1 and got["late"][0].error_type == "Late"
    assert [r["psi"] is None for _, r in got["psi"]] == [True, False]


def test_misconfiguration_raises_at_build_time():
    flow = Dataflow("bad")
    s = op.input("in", flow, TestingSource([]))
    with pytest.raises(ValueError, match="bins"):
        drift("a", s, value=float, ts=lambda e: e, window=HOUR, bins=1)
    with pytest.raises(ValueError, match="reference"):
        drift("b", s, value=float, ts=lambda e: e, window=HOUR, reference=[])
