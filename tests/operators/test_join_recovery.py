"""Join state survives a crash: Bytewax recovery resumes from the shards' snapshots."""

from __future__ import annotations

import pickle
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from streamml.operators.join import TableReady, enrich, interval_join, label_join

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ts(event: dict) -> datetime:
    return event["ts"]


def _flow(lefts, rights, sinks):
    flow = Dataflow("recover")
    left = op.input("left", flow, TestingSource(lefts))
    right = op.input("right", flow, TestingSource(rights))
    ij = interval_join(
        "ij",
        left,
        right,
        left_ts=ts,
        lower=timedelta(0),
        upper=timedelta(seconds=3),
        how="left",
        lateness=timedelta(seconds=100),
    )
    lj = label_join(
        "lj",
        left,
        right,
        ts=ts,
        max_delay=timedelta(seconds=3),
        window=timedelta(seconds=10),
        task="regression",
        prediction="x",
        label="x",
        lateness=timedelta(seconds=100),
    )
    table = op.filter_map("table", right, lambda kv: kv if kv[1]["x"] % 2 else None)
    ready = op.input("ready", flow, TestingSource([TableReady("t", 0, 1)]))
    en = enrich(
        "en",
        left,
        op.merge("changelog", table, ready),
        merge=lambda e, r: (e["x"], r["x"]),
        default=None,
        wait_for_bootstrap=False,
    )
    op.output("out_ij", ij.oks, TestingSink(sinks["ij"]))
    op.output("out_lj", lj.metrics, TestingSink(sinks["lj"]))
    op.output("out_en", en.oks, TestingSink(sinks["en"]))
    return flow


def test_abort_and_resume_gives_the_same_results(tmp_path: Path):
    lefts = [(f"k{i % 5}", {"x": i, "ts": at(i)}) for i in range(40)]
    rights = [(f"k{i % 5}", {"x": i, "ts": at(i + 1)}) for i in range(0, 40, 3)]
    whole = {"ij": [], "lj": [], "en": []}
    run_main(_flow(lefts, rights, whole))
    assert all(whole.values())

    init_db_dir(tmp_path, 1)
    cfg = RecoveryConfig(str(tmp_path))
    crashed = {"ij": [], "lj": [], "en": []}
    aborting = lefts[:25] + [TestingSource.ABORT()] + lefts[25:]
    # The abort ends the first execution where it stands; the second resumes from snapshots.
    run_main(_flow(aborting, rights, crashed), epoch_interval=timedelta(0), recovery_config=cfg)
    assert len(crashed["en"]) < len(whole["en"])  # the first execution really stopped early
    run_main(_flow(aborting, rights, crashed), epoch_interval=timedelta(0), recovery_config=cfg)
    key = repr
    assert Counter(map(key, crashed["ij"])) == Counter(map(key, whole["ij"]))
    assert Counter(map(key, crashed["lj"])) == Counter(map(key, whole["lj"]))
    assert Counter(map(key, crashed["en"])) == Counter(map(key, whole["en"]))


def test_snapshots_pickle_and_are_copies():
    from streamml.operators.join import asof
    from streamml.operators.join._shards import LEFT, RIGHT
    from streamml.operators.join.interval import _Config, _RowLogic

    cfg = _Config("i", 0, 10**7, timedelta(0), True, timedelta(days=1), None, getters=(ts, ts))
    il = _RowLogic(cfg, None)
    il.on_batch([(LEFT, [("a", {"x": 1, "ts": at(0)})]), (RIGHT, [("b", {"x": 2, "ts": at(1)})])])
    snap = il.snapshot()
    il.on_batch([(LEFT, [("a", {"x": 3, "ts": at(2)})])])
    assert snap["state"] == "streamml.join.interval" and snap["version"] == 2
    assert _RowLogic(cfg, pickle.loads(pickle.dumps(snap))).core.size() == 2

    acfg = asof._Config("a", (ts, ts), default=None, max_versions=4)
    al = asof._AsofLogic(acfg, None)
    al.on_batch([(RIGHT, [("a", {"x": 1, "ts": at(0)})]), (LEFT, [("a", {"x": 5, "ts": at(0)})])])
    snap = al.snapshot()
    al.on_batch([(RIGHT, [("a", {"x": 2, "ts": at(1)})])])
    assert snap["state"] == "streamml.join.asof" and snap["version"] == 1
    restored = asof._AsofLogic(acfg, pickle.loads(pickle.dumps(snap)))
    assert restored.size() == 2  # one version, one waiting event
    assert restored.on_eof()[0][0][0] == [("a", {"x": 1, "ts": at(0)})]  # the row merged in
