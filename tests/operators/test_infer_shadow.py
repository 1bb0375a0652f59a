"""shadow: the live results unchanged, the candidate on a stable share of keys, compared against a brute force."""

from __future__ import annotations

import math
import zlib
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.infer import shadow

from streamml.models import CallableModel

LIVE = CallableModel(lambda x: x.sum(axis=1), outputs="score", shape=(2,), version="v1")
CANDIDATE = CallableModel(
    lambda x: np.round(x[:, 0] * 2), outputs="score", shape=(2,), version="v2"
)


def _run(items: list, share: float, **kwargs: Any) -> tuple[list, list, Any]:
    flow = Dataflow("shadow")
    up = op.input("in", flow, TestingSource(items, batch_size=7))
    out = shadow("s", up, LIVE, CANDIDATE, compare="score", share=share, **kwargs)
    oks: list = []
    seen: list = []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("shadow", out.shadow, TestingSink(seen))
    run_main(flow)
    return oks, seen, out


def _picked(key: str, share: float) -> bool:
    return zlib.crc32(key.encode()) / 2**32 < share


@settings(max_examples=20, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 30), st.integers(-5, 5), st.integers(-5, 5)), max_size=60
    ),
    share=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
)
def test_live_results_are_whole_and_the_candidate_scores_exactly_its_keys(
    rows: list[tuple[int, int, int]], share: float
) -> None:
    events = [
        (f"k{k}", {"id": i, "features": [float(a), float(b)]}) for i, (k, a, b) in enumerate(rows)
    ]
    oks, seen, out = _run(events, share)
    assert sorted(e["id"] for _, e in oks) == list(range(len(events)))
    assert all(e["score"] == e["features"][0] + e["features"][1] for _, e in oks)
    # Brute force: the candidate's rows are the events of the picked keys, both outputs on each.
    want = sorted(i for i, (k, _, _) in enumerate(rows) if _picked(f"k{k}", share))
    assert sorted(e["id"] for _, e in seen) == want
    for _, e in seen:
        assert e["shadow_score"] == round(e["features"][0] * 2)
        assert (e["model_version"], e["shadow_version"]) == ("v1", "v2")
    live = np.array([rows[i][1] + rows[i][2] for i in want], dtype=float)
    cand = np.array([round(rows[i][1] * 2) for i in want], dtype=float)
    stats = out.stats.as_dict()
    assert stats["rows"] == len(want)
    if want:
        assert stats["agreement"] == pytest.approx(np.mean(live == cand))
        assert stats["mae"] == pytest.approx(np.mean(np.abs(live - cand)))
        assert stats["rmse"] == pytest.approx(math.sqrt(np.mean((live - cand) ** 2)))
    else:
        assert stats == {"rows": 0, "agreement": None, "mae": None, "rmse": None}


def test_frames_pick_rows_by_their_key_column() -> None:
    keys = [f"sensor-{i}" for i in range(40)]
    frame = pl.DataFrame({"sensor": keys, "a": [float(i) for i in range(40)], "b": [1.0] * 40})
    oks, seen, out = _run([frame], 0.5, key="sensor", inputs=["a", "b"])
    assert pl.concat(oks)["sensor"].to_list() == keys
    got = pl.concat(seen)
    assert got["sensor"].to_list() == [k for k in keys if _picked(k, 0.5)]
    assert got["shadow_score"].to_list() == [2.0 * keys.index(k) for k in got["sensor"]]
    assert out.stats.rows == len(got)


def test_misconfiguration_is_refused_when_built() -> None:
    flow = Dataflow("bad")
    up = op.input("in", flow, TestingSource([]))
    with pytest.raises(ValueError, match=r"share must be a number in \[0, 1\]"):
        shadow("a", up, LIVE, CANDIDATE, compare="score", share=1.5)
    with pytest.raises(ValueError, match="compare must be one of"):
        shadow("c", up, LIVE, CANDIDATE, compare="nope")
