"""streamml.testing: the strategies users import hold their promises, and run_operator returns
every output stream; used here on the library's own operators."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import bytewax.operators as op
import polars as pl
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st
from streamml.operators.featurize import rolling

from streamml.serde.json import JsonSerde
from streamml.testing import capture, run_operator
from streamml.testing.strategies import (
    bad_events,
    corrupt_payloads,
    keyed_events,
    late_ids,
)

DELAY = timedelta(seconds=4)


def _rolling(up):
    return rolling(
        "r",
        up,
        timestamp=lambda e: e["ts"],
        window=timedelta(seconds=10),
        fields=["x"],
        aggregates=["count"],
        max_delay=DELAY,
        shards=2,
    )


@settings(max_examples=30, deadline=None)
@given(keyed_events(max_delay=DELAY), st.integers(1, 7))
def test_keyed_events_late_ones_are_exactly_what_rolling_sends_to_late(stream, batch_size):
    out = run_operator(_rolling, stream.items, batch_size=batch_size)
    assert not out.errs
    # with duplicates an id can arrive late once and on time once: count arrivals
    every = Counter(e["id"] for _, e in stream.items)
    on_time = Counter(e["id"] for _, e in stream.on_time())
    assert Counter(r.original[1]["id"] for r in out.late) == every - on_time
    assert set(every - on_time) == stream.late
    assert Counter(e["id"] for _, e in out.oks) == Counter(e["id"] for _, e in stream.on_time())


def test_keyed_events_draws_late_events_and_duplicates_and_none_when_asked():
    quick = settings(database=None, phases=[Phase.generate])
    late = find(keyed_events(max_delay=DELAY), lambda s: len(s.late) >= 2, settings=quick)
    assert late.late == late_ids(late.items, DELAY)
    dup = find(keyed_events(), lambda s: s.duplicates, settings=quick)
    ids = Counter(e["id"] for _, e in dup.items)
    assert all(ids[i] >= 2 for i in dup.duplicates)

    @settings(max_examples=30, deadline=None)
    @given(keyed_events(max_delay=DELAY, late=False, duplicates=False))
    def clean(stream):
        assert not stream.late and not stream.duplicates
        assert len({e["id"] for _, e in stream.items}) == len(stream.items)

    clean()


@settings(max_examples=40, deadline=None)
@given(
    keyed_events(max_delay=DELAY, late=False, duplicates=False), st.lists(bad_events()), st.data()
)
def test_bad_events_each_end_in_errs_never_a_crash(stream, bad, data):
    items = list(stream.items)
    for item in bad:
        items.insert(data.draw(st.integers(0, len(items))), item)
    out = run_operator(_rolling, items, batch_size=data.draw(st.integers(1, 5)))
    assert len(out.errs) == len(bad)
    assert not out.late
    assert sorted(e["id"] for _, e in out.oks) == sorted(e["id"] for _, e in stream.items)


@settings(max_examples=200, deadline=None)
@given(st.lists(corrupt_payloads([b'{"x": 1.5}', b'{"x": -20.25}']), min_size=1, max_size=20))
def test_corrupt_payloads_each_decode_to_a_row_or_an_error(payloads):
    decoded = JsonSerde(schema={"x": pl.Float64}).decode_frame(payloads)
    assert decoded.frame.height + len(decoded.errors) == len(payloads)
    assert len({i for i, _ in decoded.errors}) == len(decoded.errors)


def test_run_operator_on_frames_and_on_a_plain_stream():
    frame = pl.DataFrame({"k": ["a", "a", None], "ts": [0, 1_000, 2_000], "x": [1.0, 3.0, 5.0]})
    out = run_operator(
        lambda up: rolling(
            "r", up, key="k", timestamp="ts", last=2, fields=["x"], aggregates=["mean"]
        ),
        [frame],
    )
    assert out.frame()["x_mean_last2"].to_list() == [1.0, 2.0]
    assert [kind for kind, _ in out.rejected()] == ["BadKey"]
    doubled = run_operator(lambda up: op.map("double", up, lambda n: 2 * n), [1, 2])
    assert doubled.oks == [2, 4] and doubled.errs == [] and doubled.late == []
    with pytest.raises(TypeError, match="holds no streams"):
        run_operator(lambda up: 42, [1])


def test_capture_keeps_each_named_stream():
    flow = Dataflow("capture")
    nums = op.input("in", flow, TestingSource(list(range(6))))
    split = op.branch("even", nums, lambda n: n % 2 == 0)
    outs = capture({"even": split.trues, "odd": split.falses})
    run_main(flow)
    assert outs == {"even": [0, 2, 4], "odd": [1, 3, 5]}
