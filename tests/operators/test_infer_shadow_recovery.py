"""shadow keeps its comparison across a crash: the sums are a versioned record, resume = uninterrupted."""

from __future__ import annotations

import pickle
from collections import Counter
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.infer import ShadowStats, shadow
from streamml.operators.infer.shadowing import STATE, _CompareLogic, _Counts

from streamml.models import CallableModel

LIVE = CallableModel(lambda x: x.sum(axis=1), outputs="score", shape=(2,), version="v1")
CANDIDATE = CallableModel(
    lambda x: np.round(x[:, 0] * 2), outputs="score", shape=(2,), version="v2"
)
EVENTS = [(f"k{i % 7}", {"id": i, "features": [float(i % 5), float(i % 3)]}) for i in range(60)]


def _run(
    items: list, recovery: RecoveryConfig | None = None, workers: int = 1
) -> tuple[list, list, ShadowStats]:
    flow = Dataflow("shadow_resume")
    up = op.input("in", flow, TestingSource(items, batch_size=4))
    out = shadow("s", up, LIVE, CANDIDATE, compare="score", share=0.6, max_batch=8)
    oks: list = []
    seen: list = []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("shadow", out.shadow, TestingSink(seen))
    interval = None if recovery is None else timedelta(0)
    if workers == 1:
        run_main(flow, epoch_interval=interval, recovery_config=recovery)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return oks, seen, out.stats


def _ids(items: list) -> Counter:
    return Counter(e["id"] for _, e in items)


def test_crash_and_resume_gives_the_uninterrupted_results_and_comparison(tmp_path: Path) -> None:
    oks, seen, stats = _run(EVENTS)
    assert 0 < stats.rows < len(EVENTS)  # a share: some keys only

    init_db_dir(tmp_path, 1)
    cfg = RecoveryConfig(str(tmp_path))
    half = 28  # a source batch starts there: a crash mid-batch would emit its rows twice
    oks1, seen1, before = _run([*EVENTS[:half], TestingSource.ABORT(), *EVENTS[half:]], cfg)
    assert 0 < before.rows < stats.rows  # it stopped half-way
    # a resume starts at the crash's index: a fresh ABORT there would fire again
    oks2, seen2, after = _run(
        [*EVENTS[:half], TestingSource.PAUSE(timedelta(0)), *EVENTS[half:]], cfg
    )
    # at least once (docs/guarantees.md): every row, and a row twice only if the first run wrote
    # it after the snapshot it resumed from (the model thread's batch can finish after it)
    for first, second, whole in ((oks1, oks2, oks), (seen1, seen2, seen)):
        assert set(_ids(first + second)) == set(_ids(whole))
        assert _ids(first + second) - _ids(whole) <= _ids(first)
    # the resumed comparison counts the rows before the crash too, as if it had not stopped
    assert after.rows == stats.rows
    want, got = stats.as_dict(), after.as_dict()
    assert got == {name: pytest.approx(value) for name, value in want.items()}


def test_two_workers_compare_every_row_in_one_state() -> None:
    oks, seen, stats = _run(EVENTS)
    oks2, seen2, stats2 = _run(EVENTS, workers=2)
    assert _ids(oks2) == _ids(oks) and _ids(seen2) == _ids(seen)
    assert stats2.as_dict() == {name: pytest.approx(v) for name, v in stats.as_dict().items()}


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(-3, 3), st.integers(-3, 3)), min_size=1, max_size=5),
        max_size=6,
    ),
    st.booleans(),
)
def test_the_snapshot_is_a_plain_versioned_record_that_restores_the_sums(
    batches: list[list[tuple[int, int]]], text: bool
) -> None:
    stats = ShadowStats()
    logic = _CompareLogic(stats, _Counts())
    for batch in batches:
        live, cand = (np.array(side, dtype=float) for side in zip(*batch))
        if text:  # a label output: agreement only
            live, cand = live.astype(str), cand.astype(str)
        logic.on_batch([_Counts.of(live, cand)])
    record = pickle.loads(pickle.dumps(logic.snapshot()))
    assert record["state"] == STATE and record["version"] == 1
    assert all(isinstance(v, (bool, int, float)) for v in record["data"].values())
    assert b"streamml" not in pickle.dumps(record["data"])  # no class of ours is pickled

    resumed = ShadowStats()
    _CompareLogic(resumed, _Counts.from_data(record["data"]))
    assert resumed.as_dict() == stats.as_dict()
    pairs = [pair for batch in batches for pair in batch]
    assert resumed.rows == len(pairs)
    if pairs:
        assert resumed.agreement == pytest.approx(np.mean([a == b for a, b in pairs]))
    if pairs and not text:
        assert resumed.mae == pytest.approx(np.mean([abs(b - a) for a, b in pairs]))
    else:
        assert resumed.mae is None and resumed.rmse is None
