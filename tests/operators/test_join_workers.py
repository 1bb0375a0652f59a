"""The joins give the same results on one worker and on two (state is routed by key shard)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from streamml.operators.join import TableReady, enrich, interval_join, label_join

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ts(event: dict) -> datetime:
    return event["ts"]


def _run(build, workers: int) -> dict[str, list]:
    flow = Dataflow("workers")
    outs = build(flow)
    got = {name: [] for name in outs}
    for name, stream in outs.items():
        op.output(f"out_{name}", stream, TestingSink(got[name]))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return got


def _same(build, normalize) -> None:
    one = _run(build, 1)
    two = _run(build, 2)
    for name in one:
        assert one[name], f"{name} is empty: the comparison would prove nothing"
        assert normalize(one[name]) == normalize(two[name]), name


def _counter(items):
    return Counter(repr(x) for x in items)


def test_enrich_one_vs_two_workers():
    rows = [(f"k{i}", {"v": i}) for i in range(50)] + [("k3", None), TableReady("t", 0, 1)]
    events = [(f"k{i % 60}", {"id": i}) for i in range(300)]

    def build(flow):
        out = enrich(
            "e",
            op.input("ev", flow, TestingSource(events, batch_size=16)),
            op.input("tb", flow, TestingSource(rows, batch_size=8)),
            shards=8,
        )
        return {"oks": out.oks, "errs": op.map("errs", out.errs, lambda r: r.original)}

    _same(build, _counter)


def test_interval_and_label_join_one_vs_two_workers():
    preds = [
        (f"e{i}", {"prediction": i % 2, "model_version": f"v{i % 2}", "ts": at(i / 4)})
        for i in range(400)
    ]
    labels = [
        (f"e{i}", {"label": (i // 3) % 2, "ts": at(i / 4 + (i % 7))}) for i in range(0, 400, 2)
    ]

    def build(flow):
        p = op.input("preds", flow, TestingSource(preds, batch_size=16))
        lb = op.input("labels", flow, TestingSource(labels, batch_size=16))
        lj = label_join(
            "lj",
            p,
            lb,
            ts=ts,
            max_delay=timedelta(seconds=5),
            window=timedelta(seconds=20),
            lateness=timedelta(seconds=200),
            shards=8,
        )
        ij = interval_join(
            "ij",
            op.key_on("by_version", op.key_rm("p_rm", p), lambda e: e["model_version"]),
            op.key_on("lb_version", op.key_rm("l_rm", lb), lambda e: f"v{e['label']}"),
            left_ts=ts,
            lower=timedelta(seconds=-1),
            upper=timedelta(seconds=1),
            lateness=timedelta(seconds=200),
            how="left",
            shards=8,
        )
        return {
            "labelled": lj.labelled,
            "unlabelled": lj.unlabelled,
            "metrics": lj.metrics,
            "pairs": ij.oks,
        }

    _same(build, _counter)
