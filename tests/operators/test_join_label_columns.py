"""label_join on frames, the usual rows matched on columns: the same results as the row loop.

The frames path matches a row on columns when its id comes once in the
call, nothing of its own side waits for the id and at most one item of the
other side does (the fraud example's case: every transaction has one
prediction and at most one label). These tests draw such ids, with label
times on and just past the ``max_delay`` bound and on both sides of the
prediction, mixed with ids that take the row loop, and compare every output
and every window's sums with the rows path to the bit.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.join import _label_frame_logic
from streamml.operators.join._shards import LEFT, RIGHT, micros

from tests.operators.test_join_label import DELAY, T0, drive
from tests.operators.test_join_label_frames import drive_frames, rows_of

_D = micros(DELAY)
# label time - prediction time: on, inside and just outside [0, max_delay]
_OFFSETS = [-1, 0, 1, _D - 1, _D, _D + 1, 2 * _D, -_D]


@st.composite
def one_per_id(draw):
    """Ids with one prediction and at most one label each (a few with a second label or
    prediction, for the row loop), in a random arrival order, and where calls are cut."""
    n = draw(st.integers(1, 40))
    items = []
    for i in range(n):
        key = f"tx{i}"
        t = draw(st.integers(0, 40)) * 1_000_000 + draw(st.sampled_from([0, 1, 999_999]))
        pred = {
            "id": 3 * i,
            "prediction": draw(st.integers(0, 1)),
            "p": draw(st.floats(0.01, 0.99)),
            "model_version": draw(st.sampled_from(["a", "b"])),
            "ts": T0 + timedelta(microseconds=t),
        }
        items.append((LEFT, key, pred))
        for extra in range(draw(st.sampled_from([0, 1, 1, 1, 1, 2]))):
            lt = t + draw(st.sampled_from(_OFFSETS))
            label = {"id": 3 * i + 1 + extra, "label": draw(st.integers(0, 1))}
            items.append((RIGHT, key, {**label, "ts": T0 + timedelta(microseconds=lt)}))
    items = draw(st.permutations(items))
    cuts = draw(st.lists(st.integers(0, len(items)), max_size=8))
    return draw(st.integers(0, 60)), items, cuts


def _window_sums(parts):
    """Each closed window part's counts and sums, exactly (the confusion in insertion order)."""
    return {
        (ws, version): (p.predictions, p.labelled, p.unlabelled, p.stats.to_data())
        for ws, version, p in (x for x in parts if len(x) == 3)
    }


@settings(max_examples=150, deadline=None)
@given(one_per_id())
def test_usual_rows_on_columns_equal_the_row_loop(arr):
    lateness, items, cuts = arr
    with pytest.MonkeyPatch.context() as mp:  # every call on columns, however small
        mp.setattr(_label_frame_logic, "_COLUMNS_FROM", 1)
        (labelled, unlabelled, errs, late, parts), lg = drive_frames(items, cuts, lateness)
    rows_out, _ = drive(items, cuts, lateness)
    got = sorted((r["id"], r["label"]) for r in rows_of(labelled))
    assert got == sorted((e["id"], e["label"]) for _, e in rows_out[0])
    assert sorted(r["id"] for r in rows_of(unlabelled)) == sorted(e["id"] for _, e in rows_out[1])
    assert sorted(r.original["id"] for r in errs) == sorted(
        r.original[1]["id"] for r in rows_out[2]
    )
    assert sorted(r.original["id"] for r in late) == sorted(
        r.original[1]["id"] for r in rows_out[3]
    )
    assert _window_sums(parts) == _window_sums(rows_out[4])
    assert lg.size() == 0 and not lg.stores[0].alive.any() and not lg.stores[1].alive.any()
