"""Featurization gives the same results on 2 workers as on 1 (state routed by key or shard)."""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime, timedelta, timezone

import bytewax.operators as op
import polars as pl
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import TumblingWindower
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from streamml.operators.featurize import online_scale, rolling, window_agg

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def _ts(e):
    return T0 + timedelta(seconds=e["s"])


def _run(items, runner):
    sinks = {"roll": [], "late": [], "win": [], "z": [], "frames": [], "frames_late": []}
    flow = Dataflow("workers")
    up = op.input("in", flow, TestingSource(items, batch_size=7))
    roll = rolling(
        "roll",
        up,
        timestamp=_ts,
        window=timedelta(seconds=10),
        fields=["x"],
        aggregates=["count", "mean", "std", "min"],
        max_delay=timedelta(seconds=3),
        shards=5,
    )
    win = window_agg(
        "win",
        up,
        timestamp=_ts,
        fields=["x"],
        aggregates=["count", "max"],
        windower=TumblingWindower(timedelta(seconds=5), align_to=T0),
        idle_advance=False,
    )
    frames = op.flat_map_batch(  # each Bytewax batch as a frame, times in epoch milliseconds
        "frames",
        up,
        lambda batch: [pl.DataFrame([{"key": k, "ms": e["s"] * 1000, **e} for k, e in batch])],
    )
    on_frames = rolling(
        "roll_frames",
        frames,
        key="key",
        timestamp="ms",
        window=timedelta(seconds=10),
        last=4,
        fields=["x"],
        aggregates=["count", "mean", "min"],
        max_delay=timedelta(seconds=3),
        shards=5,
    )
    op.output("out_frames", on_frames.oks, TestingSink(sinks["frames"]))
    op.output("out_frames_late", on_frames.late, TestingSink(sinks["frames_late"]))
    scaled = online_scale("z", up, fields=["x"])
    op.output("out_roll", roll.oks, TestingSink(sinks["roll"]))
    op.output("out_late", roll.late, TestingSink(sinks["late"]))
    op.output("out_win", win.oks, TestingSink(sinks["win"]))
    op.output("out_z", scaled.oks, TestingSink(sinks["z"]))
    runner(flow)
    return sinks


def test_two_workers_give_the_same_features():
    items = [
        (f"k{i % 7}", {"id": i, "s": i // 2 - (10 if i % 9 == 0 else 0), "x": float(i % 13)})
        for i in range(200)
    ]
    one = _run(items, run_main)
    two = _run(items, lambda flow: cluster_main(flow, [], 0, worker_count_per_proc=2))
    assert one["roll"] and one["late"]
    assert one["frames"] and one["frames_late"]
    for run in (one, two):
        run["frames"] = [r for f in run["frames"] for r in f.iter_rows(named=True)]
    a = {r["id"]: r for r in one["frames"]}
    b = {r["id"]: r for r in two["frames"]}
    assert len(a) == len(one["frames"]) and a.keys() == b.keys()
    for i, row in a.items():  # the last bits of mean may differ, as for rows
        assert row.keys() == b[i].keys()
        for f, v in row.items():
            w = b[i][f]
            assert v == w or math.isclose(v, w, rel_tol=1e-12, abs_tol=1e-12), (i, f)
    for name in ("late", "win", "z", "frames_late"):
        assert Counter(map(repr, two[name])) == Counter(map(repr, one[name])), name
    # rolling features may differ in the last bits: sums are centred per batch of rows
    a = {e["id"]: (k, e) for k, e in one["roll"]}
    b = {e["id"]: (k, e) for k, e in two["roll"]}
    assert len(a) == len(one["roll"]) and a.keys() == b.keys()
    for i, (key, ev) in a.items():
        other_key, other = b[i]
        assert key == other_key and ev.keys() == other.keys()
        for f, v in ev.items():
            assert math.isclose(v, other[f], rel_tol=1e-12, abs_tol=1e-12), (i, f)
