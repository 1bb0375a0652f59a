"""online_scale's row state: its one-pass batch path against its general path, and its record."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.featurize._moments import Moments
from streamml.operators.featurize.scaling import _Moments, _RowScaleLogic, _upgrade_moments

FIELDS = ("x", "y")
NAMES = ["x_z", "y_z"]

# mostly good rows (floats of any size, ints), now and then a value the one-pass path must
# leave to extract: NaN, infinities, a bool, text, an int beyond float range, a missing field
_value = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(-1e3, 1e3),
    st.integers(-(2**60), 2**60),
    st.sampled_from([math.nan, math.inf, -math.inf, True, "1", 10**400, None]),
)
_row = st.tuples(
    st.sampled_from(["a", "a", "b"]), st.fixed_dictionaries({"x": _value, "y": _value})
)
_batches = st.lists(st.lists(_row, min_size=1, max_size=8), min_size=1, max_size=6)


def _general(logic: _RowScaleLogic, batch: list[Any]) -> tuple[list, list]:
    """A batch through the general path alone (what on_batch falls back to)."""
    return logic._scale_any(batch, logic.clock())


def _same(a: Any, b: Any) -> bool:
    """Equal to the bit, NaN included (repr of floats is exact)."""
    return repr(a) == repr(b)


@settings(max_examples=150, deadline=None)
@given(batches=_batches)
def test_one_pass_path_equals_the_general_path_to_the_bit(batches: list[list[Any]]) -> None:
    fast = _RowScaleLogic("z", FIELDS, NAMES, None, None)
    general = _RowScaleLogic("z", FIELDS, NAMES, None, None)
    for batch in batches:
        [(oks, errs)], discard = fast.on_batch(batch)
        want_oks, want_errs = _general(general, batch)
        assert _same(oks, want_oks)
        assert _same(errs, want_errs)
        assert discard == (general.n == 0)
        # a batch the one-pass path gave up on left the state as the general path has it
        assert _same((fast.n, fast.mean, fast.m2), (general.n, general.mean, general.m2))


@settings(max_examples=50, deadline=None)
@given(ints=st.lists(st.integers(-1000, 1000), min_size=1, max_size=40), cut=st.integers(0, 40))
def test_rows_scaled_by_their_history_as_the_frame_state_does(ints: list[int], cut: int) -> None:
    """Two batches of one key against Moments.update (the frame shards' vectorised state)."""
    values = [i / 7 for i in ints]
    logic = _RowScaleLogic("z", ("x",), ["x_z"], None, None)
    rows = [("k", {"x": v}) for v in values]
    got = []
    for part in (rows[:cut], rows[cut:]):
        if part:
            got += [e["x_z"] for _, e in logic.on_batch(part)[0][0][0]]
    moments = Moments(1)
    want = moments.update(moments.kids(["k"] * len(values)), np.array([values]).T, now=0.0)
    np.testing.assert_allclose(got, want[:, 0], rtol=1e-9, atol=1e-9)
    assert logic.n == len(values)


def test_snapshot_is_the_one_key_moments_record_and_resumes() -> None:
    logic = _RowScaleLogic("z", FIELDS, NAMES, None, None, clock=lambda: 50.0)
    logic.on_batch([("a", {"x": 1.0, "y": 2}), ("a", {"x": 3.0, "y": 2})])
    record = logic.snapshot()
    assert (record["state"], record["version"]) == ("streamml.featurize.online_scale", 1)
    data = record["data"]
    assert data["path"] == "rows" and data["keys"] == [None]
    moments = Moments(2, data)  # the layout Moments itself writes, so either reads the other
    assert (moments.n.tolist(), moments.mean.tolist(), moments.m2.tolist()) == (
        [2],
        [[2.0, 2.0]],
        [[2.0, 0.0]],
    )
    assert data["seen"].tolist() == [50.0]
    resumed = _RowScaleLogic("z", FIELDS, NAMES, None, record)
    [(oks, _)], _ = resumed.on_batch([("a", {"x": 2.0, "y": 2})])
    assert oks == [("a", {"x": 2.0, "y": 2, "x_z": 0.0, "y_z": 0.0})]


def test_a_previous_release_key_state_resumes() -> None:
    from datetime import datetime, timezone

    old = _Moments(n=2, mean=(2.0,), m2=(2.0,), seen=datetime(2024, 1, 1, tzinfo=timezone.utc))
    assert _upgrade_moments(old)["keys"] == [None]
    resumed = _RowScaleLogic("z", ("x",), ["x_z"], None, old)
    assert (resumed.n, resumed.mean, resumed.m2) == (2, [2.0], [2.0])


def test_a_wake_up_is_never_late_and_an_early_one_asks_again_exactly() -> None:
    from datetime import timedelta

    now = [100.0]
    logic = _RowScaleLogic("z", ("x",), ["x_z"], timedelta(seconds=80), None, clock=lambda: now[0])
    wakes = []
    for t in (100.0, 109.0, 111.0, 121.0):
        now[0] = t
        logic.on_batch([("a", {"x": t})])
        wakes.append(logic.notify_at().timestamp())
    # the time asked for stays while it is at most ttl / 8 (10 s) early, never after the expiry
    assert wakes == [180.0, 180.0, 191.0, 191.0]
    now[0] = 191.0  # woken early: the key (last row at 121) is fresh until 201
    assert logic.on_notify() == ([], False)
    assert logic.notify_at().timestamp() == 201.0
    now[0] = 201.0
    assert logic.on_notify() == ([], True)
    assert logic.notify_at() is None
