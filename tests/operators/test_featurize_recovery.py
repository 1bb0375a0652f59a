"""Featurization state survives a crash: Bytewax recovery resumes from the snapshots."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import bytewax.operators as op
import polars as pl
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import SlidingWindower
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from streamml.operators.featurize import online_scale, rolling, window_agg

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def _ts(e):
    return T0 + timedelta(seconds=e["s"])


def _flow(items, sinks):
    flow = Dataflow("recover")
    up = op.input("in", flow, TestingSource(items, batch_size=3))
    roll = rolling(
        "roll",
        up,
        timestamp=_ts,
        window=timedelta(seconds=10),
        fields=["x"],
        aggregates=["count", "mean", "max", "p50"],
        max_delay=timedelta(seconds=4),
        shards=2,
    )
    windows = rolling(  # several windows in one state
        "roll_windows",
        up,
        timestamp=_ts,
        window=[timedelta(seconds=10), timedelta(seconds=3)],
        fields=["x"],
        aggregates=["count", "mean", "max", "p50"],
        max_delay=timedelta(seconds=4),
        shards=2,
    )
    win = window_agg(
        "win",
        up,
        timestamp=_ts,
        fields=["x"],
        aggregates=["count", "sum"],
        windower=SlidingWindower(timedelta(seconds=6), timedelta(seconds=3), align_to=T0),
        max_delay=timedelta(seconds=4),
        idle_advance=False,
    )
    frames = op.flat_map_batch(  # each Bytewax batch of rows as one frame
        "frames", up, lambda batch: [pl.DataFrame([{"key": k, **e} for k, e in batch])]
    )
    on_frames = rolling(  # the frame path: time and count windows
        "roll_frames",
        frames,
        key="key",
        timestamp="ms",
        window=timedelta(seconds=10),
        last=[3, 8],
        fields=["x"],
        aggregates=["count", "mean", "max", "p50"],
        max_delay=timedelta(seconds=4),
        shards=2,
    )
    scaled = online_scale("z", up, fields=["x"])
    op.output("out_roll", roll.oks, TestingSink(sinks["roll"]))
    op.output("out_late", roll.late, TestingSink(sinks["late"]))
    op.output("out_windows", windows.oks, TestingSink(sinks["windows"]))
    op.output("out_win", win.oks, TestingSink(sinks["win"]))
    op.output("out_z", scaled.oks, TestingSink(sinks["z"]))
    op.output("out_frames", on_frames.oks, TestingSink(sinks["frames"]))
    op.output("out_frames_late", on_frames.late, TestingSink(sinks["frames_late"]))
    return flow


def test_abort_and_resume_gives_the_same_results(tmp_path: Path):
    items = [
        (
            f"k{i % 3}",
            {
                "id": i,
                "s": i - (4 if i % 7 == 0 else 0) - (9 if i % 11 == 0 else 0),
                "x": float(i % 5),
                "ms": 1000 * (i - (4 if i % 7 == 0 else 0) - (9 if i % 11 == 0 else 0)),
            },
        )
        for i in range(60)
    ]
    names = ("roll", "late", "windows", "win", "z", "frames", "frames_late")
    whole = {name: [] for name in names}
    run_main(_flow(items, whole))
    assert all(whole.values())

    init_db_dir(tmp_path, 1)
    cfg = RecoveryConfig(str(tmp_path))
    crashed = {name: [] for name in names}
    aborting = items[:31] + [TestingSource.ABORT()] + items[31:]
    run_main(_flow(aborting, crashed), epoch_interval=timedelta(0), recovery_config=cfg)
    assert len(crashed["roll"]) < len(whole["roll"])  # the first execution really stopped early
    run_main(_flow(aborting, crashed), epoch_interval=timedelta(0), recovery_config=cfg)
    for frames in (whole["frames"], crashed["frames"]):  # compare the frames' rows
        frames[:] = [row for frame in frames for row in frame.iter_rows()]
    assert len(crashed["frames"]) < 2 * len(whole["frames"])  # resumed, not replayed from 0
    assert whole["frames_late"] and len(whole["frames"][0]) == 5 + 3 * 4  # inputs, features
    for name in whole:
        assert Counter(map(repr, crashed[name])) == Counter(map(repr, whole[name])), name


def test_resumes_from_a_store_written_before_versioned_snapshots(tmp_path: Path):
    """A store of the last ``rolling`` that pickled its private state (fixtures/rolling_v0,
    made by its make.py) resumes with today's code: what it emitted before its abort plus what
    today's code emits after = one uninterrupted run of today's code."""
    from tests.operators.fixtures.rolling_v0.flow import build

    fixture = Path(__file__).parent / "fixtures" / "rolling_v0"
    shutil.copytree(fixture / "store", tmp_path / "store")
    before = json.loads((fixture / "before_abort.json").read_text())
    resumed: dict[str, list] = {"oks": [], "late": []}
    cfg = RecoveryConfig(str(tmp_path / "store"))
    run_main(build(resumed, abort=False), epoch_interval=timedelta(0), recovery_config=cfg)
    whole: dict[str, list] = {"oks": [], "late": []}
    run_main(build(whole, abort=False))
    assert before["oks"] and resumed["oks"] and resumed["late"]
    got = [tuple(item) for item in before["oks"]] + resumed["oks"]
    assert Counter(map(repr, got)) == Counter(map(repr, whole["oks"]))
    got_late = [tuple(item) for item in before["late"]] + [r.original for r in resumed["late"]]
    assert Counter(map(repr, got_late)) == Counter(repr(r.original) for r in whole["late"])
