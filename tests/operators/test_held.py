"""HeldRows, the growable store of held rows: any sequence of holds, releases and looks gives
the rows a plain list would hold, in arrival order, frames and data included."""

from __future__ import annotations

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators._core.held import HeldRows

# a step: hold a batch of n rows, release the rows whose due time is <= t, or look at the view
steps = st.lists(
    st.one_of(
        st.tuples(st.just("hold"), st.integers(0, 40)),
        st.tuples(st.just("release"), st.integers(0, 300)),
        st.tuples(st.just("view"), st.booleans()),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(steps, st.booleans(), st.randoms(use_true_random=False))
def test_held_rows_match_a_list_of_rows(steps: list, frames: bool, rng) -> None:
    rows = HeldRows(width=2)
    model: list[tuple[int, int, float, float]] = []  # (row id, due, arrived, data)
    next_id = 0
    for what, arg in steps:
        if what == "hold":
            ids = np.arange(next_id, next_id + arg)
            next_id += arg
            due = np.array([rng.randrange(300) for _ in ids], dtype=np.int64)
            data = np.column_stack([ids * 1.0, ids * -1.0]) if arg else np.zeros((0, 2))
            frame = pl.DataFrame({"id": ids}) if frames else None
            rows.add(frame, ids % 7, due, float(arg), data)
            model += [(i, d, float(arg), i * 1.0) for i, d in zip(ids.tolist(), due.tolist())]
        elif what == "release":
            kid, ts, arrived, alive = rows.columns()
            out = ts <= arg
            if alive is not None:
                out &= alive
            idx = out.nonzero()[0]
            if not len(idx):
                continue
            if len(idx) == len(rows):
                got = rows.pop_all()
            else:
                got = rows.take(idx)
                rows.drop(idx)
            want = [r for r in model if r[1] <= arg]
            model = [r for r in model if r[1] > arg]
            assert got.data[:, 0].tolist() == [r[3] for r in want]
            assert got.ts.tolist() == [r[1] for r in want]
            assert got.arrived.tolist() == [r[2] for r in want]
            assert got.kid.tolist() == [r[0] % 7 for r in want]
            if frames:
                assert got.frame["id"].to_list() == [r[0] for r in want]
        else:
            view = rows.view()
            assert view.data[:, 0].tolist() == [r[3] for r in model]
            assert view.data[:, 1].tolist() == [-r[3] for r in model]
            assert view.ts.tolist() == [r[1] for r in model]
            if frames and model:
                assert view.frame["id"].to_list() == [r[0] for r in model]
                if arg:  # an operator adds a column to the view's frame: the held rows keep it
                    view.frame = view.frame.with_columns(twice=pl.col("id") * 2)
        assert len(rows) == len(model)
        if model:  # no row is due before due_min
            assert rows.due_min <= min(r[1] for r in model)
    if frames and model:
        final = rows.pop_all().frame
        assert final["id"].to_list() == [r[0] for r in model]


def test_capacity_goes_back_after_a_burst() -> None:
    rows = HeldRows(width=1)
    n = 50_000
    rows.add(None, np.zeros(n, dtype=np.int64), np.arange(n), 0.0, np.ones((n, 1)))
    rows.add(None, np.zeros(1, dtype=np.int64), np.array([10**9]), 0.0, np.ones((1, 1)))
    assert len(rows.ts) >= n + 1
    rows.drop(np.arange(n - 10))  # most rows released: squeezed, and the arrays shrink
    assert len(rows) == 11 and len(rows.ts) <= 1024
    assert rows.view().ts.tolist() == [*range(n - 10, n), 10**9]
    rows.pop_all()
    rows.add(None, np.zeros(n, dtype=np.int64), np.arange(n), 0.0, np.ones((n, 1)))
    rows.add(None, np.zeros(1, dtype=np.int64), np.array([10**9]), 0.0, np.ones((1, 1)))
    rows.pop_all()  # everything released at once
    assert len(rows) == 0 and len(rows.ts) <= 1024
