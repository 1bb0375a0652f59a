"""The batch unit's row conversions: nothing raises, nothing is lost, nothing silently changes type."""

from __future__ import annotations

import math

import bytewax.operators as op
import polars as pl
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given
from hypothesis import strategies as st

from streamml.frames import from_rows, to_frames, to_rows

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=3),
)
rows = st.lists(
    st.one_of(
        st.dictionaries(st.sampled_from(["a", "b", "c"]), values, max_size=3),
        st.integers(),
        st.text(max_size=3),
    ),
    max_size=12,
)


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, (bool, int, float)) and isinstance(b, (int, float)) and type(a) is not bool:
        return float(a) == float(b)
    return a == b


@given(rows)
def test_from_rows_keeps_or_rejects_every_row_unchanged(batch: list) -> None:
    frame, bad = from_rows(batch, "s")
    kept = [] if frame is None else frame.to_dicts()
    assert len(kept) + len(bad) == len(batch)
    assert all(r.error_type == "BadItem" and r.step_id == "s" for r in bad)
    rejected_ids = {id(r.original) for r in bad}
    survivors = [row for row in batch if id(row) not in rejected_ids]
    assert len(survivors) == len(kept)
    for row, out in zip(survivors, kept):
        for name, value in row.items():
            assert _same(value, out[name]), (name, value, out[name])
        # fields the row lacks are null, never invented
        assert all(out[name] is None for name in out.keys() - row.keys())


def test_a_string_among_numbers_is_rejected_not_converted() -> None:
    frame, bad = from_rows([{"t": 1.5}, {"t": "hot"}, {"t": 2}])
    assert frame.schema["t"] == pl.Float64
    assert frame["t"].to_list() == [1.5, 2.0]
    assert [r.original for r in bad] == [{"t": "hot"}]
    assert "field 't' is str 'hot'" in bad[0].reason


def test_a_bool_is_not_a_number() -> None:
    frame, bad = from_rows([{"t": 1}, {"t": 2}, {"t": True}])
    assert frame["t"].to_list() == [1, 2] and [r.original for r in bad] == [{"t": True}]


def test_to_frames_and_back_in_a_dataflow() -> None:
    events = [{"id": "a", "x": 1}, 42, {"id": "b", "x": 2.5}, {"id": "c", "x": "?"}]
    flow = Dataflow("frames_round_trip")
    frames = to_frames("frames", op.input("in", flow, TestingSource(events, 4)))
    out, errs = [], []
    op.output("out", to_rows("rows", frames.oks), TestingSink(out))
    op.output("errs", frames.errs, TestingSink(errs))
    run_main(flow)
    assert out == [{"id": "a", "x": 1.0}, {"id": "b", "x": 2.5}]
    assert sorted(map(str, (r.original for r in errs))) == ["42", "{'id': 'c', 'x': '?'}"]
    assert {r.step_id for r in errs} == {"frames_round_trip.frames.frames"}
