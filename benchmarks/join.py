"""Join throughput: streamml's sharded joins next to the same logic keyed per user key.

- Enrichment: 100,000-row table (bootstrap), then events over those keys.
  Rate = events / wall time of the whole run (table load included).
- Enrichment in the fraud example's shape (``python -m benchmarks.join enrich``):
  2,000-row account table, transactions in frames of 500 rows, 2 shards,
  next to the same transactions as ``(key, dict)`` rows.
- Interval join: 1,000 keys, ``[0, 10 s]`` interval, each key one event per
  second of event time on alternating sides. Rate = input events / wall time.
- As-of join: 1,000 accounts, one item per account per second of event time,
  half of them table versions and half events, lateness 5 s. Rate = input
  items / wall time.
- Label join: predictions keyed by event id, 1,000 a second, each with a
  label 2 s later (a third 7 s later, past ``max_delay`` 5 s), lateness 10 s,
  60 s windows. Rate = predictions and labels / wall time.

The baseline in each table is the obvious Bytewax way: state keyed by the
user's key, so Bytewax calls the logic once per key per batch. It is the same
public operator with ten times as many shards as keys (CRC32 spreads the keys
so that ~95% of them have a shard of their own): the same join logic, keyed
(almost) per key, built only from public operators.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import polars as pl
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from streamml.operators.join import TableReady, asof_join, enrich, interval_join, label_join

from benchmarks.harness import CountSink, alternate, format_table

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
BATCH = 1000


def _per_key_shards(keys: int) -> int:
    """Shards for the per-key baseline: 10 per key, so ~95% of keys are alone in theirs."""
    return 10 * keys


def _enrich_data(rows: int, events: int) -> tuple[list, list]:
    rng = random.Random(1)
    table = [
        (
            f"dev-{i:06d}",
            {"site": f"site-{i % 50}", "model": f"m{i % 7}", "installed": 2000 + i % 25},
        )
        for i in range(rows)
    ]
    table.append(TableReady("devices", 0, 1))
    stream = [
        (f"dev-{rng.randrange(rows):06d}", {"temperature": 20.0 + i % 10, "seq": i})
        for i in range(events)
    ]
    return table, stream


def _run_enrich(table: list, stream: list, *, per_key: bool) -> int:
    flow = Dataflow("bench_enrich")
    ev = op.input("events", flow, TestingSource(stream, batch_size=BATCH))
    tb = op.input("table", flow, TestingSource(table, batch_size=BATCH))
    if per_key:
        # No bootstrap wait (its marker would go to every one of the million shards);
        # a miss is merged with {} so every event comes out, as in the sharded run.
        rows = op.filter("rows", tb, lambda x: type(x) is not TableReady)
        out = enrich(
            "enrich",
            ev,
            rows,
            default={},
            wait_for_bootstrap=False,
            shards=_per_key_shards(len(table) - 1),
        )
    else:
        out = enrich("enrich", ev, tb)
    sink = CountSink()
    op.output("out", out.oks, sink)
    run_main(flow)
    assert sink.counter[0] == len(stream), (sink.counter[0], len(stream))
    return len(stream)


def _fraud_data(n: int, accounts: int = 2000, rows: int = 500) -> tuple[list, list]:
    """The fraud example's shape: an account table (a 2% of its rows changed again), then
    transactions over known accounts as frames of ``rows`` rows of its nine columns."""
    rng = random.Random(4)
    countries = ["US", "GB", "DE", "FR", "NL", "ES"]
    table: list = [
        (
            f"acct-{i:05d}",
            {
                "home_country": countries[i % 6],
                "account_age_days": 5 + i % 3000,
                "credit_limit": float(500 + 100 * (i % 400)),
                "risk_tier": i % 4,
            },
        )
        for i in range(accounts)
    ]
    table += [(k, {**row, "credit_limit": row["credit_limit"] * 2}) for k, row in table[::50]]
    table.append(TableReady("accounts", 0, 1))
    frames = [
        pl.DataFrame(
            {
                "tx_id": [f"tx-{i:08d}" for i in range(s, s + rows)],
                "account_id": [f"acct-{rng.randrange(accounts):05d}" for _ in range(rows)],
                "ts": [T0 + timedelta(milliseconds=i) for i in range(s, s + rows)],
                "amount": [rng.random() * 100 for _ in range(rows)],
                "merchant_category": [countries[i % 6] for i in range(rows)],
                "country": [countries[(i + 1) % 6] for i in range(rows)],
                "card_present": [i % 3 == 0 for i in range(rows)],
                "local_hour": [i % 24 for i in range(rows)],
                "distance_km": [rng.random() * 50 for _ in range(rows)],
            }
        )
        for s in range(0, n, rows)
    ]
    return table, frames


def _run_fraud_enrich(table: list, events: list, *, frames: bool) -> int:
    flow = Dataflow("bench_enrich_fraud")
    ev = op.input("events", flow, TestingSource(events, batch_size=1 if frames else 500))
    tb = op.input("table", flow, TestingSource(table, batch_size=BATCH))
    wait = timedelta(seconds=5)
    if frames:
        out = enrich("enrich", ev, tb, key="account_id", max_wait=wait, shards=2)
    else:
        out = enrich("enrich", ev, tb, max_wait=wait, shards=2)
    sink = CountSink()
    op.output("out", out.oks, sink)
    run_main(flow)
    n = sum(len(f) for f in events) if frames else len(events)
    assert sink.counter[0] == n, (sink.counter[0], n)
    return n


def enrich_main(quick: bool = False) -> dict:
    """enrich on frames in the fraud example's shape, next to the same transactions as rows.

    2,000-row account table (bootstrap), transactions over known accounts
    in frames of 500 rows (rows: ``(account_id, dict)`` in batches of 500),
    2 shards, ``max_wait`` 5 s as the example. Rate = transactions / time,
    table load included.
    """
    n = 100_000 if quick else 400_000
    rounds = 3 if quick else 5
    table, frames = _fraud_data(n)
    rows = [(r["account_id"], r) for f in frames for r in f.to_dicts()]
    print(f"enrich, fraud shape: 2,000-row table, {n:,} transactions, {rounds} rounds", flush=True)
    return _cpu_race(
        "Enrichment join, fraud shape (transactions/s)",
        {
            "enrich frames (2 shards)": lambda: _run_fraud_enrich(table, frames, frames=True),
            "enrich rows (2 shards)": lambda: _run_fraud_enrich(table, rows, frames=False),
        },
        "tx/s",
        rounds,
    )


def _interval_data(keys: int, events: int) -> tuple[list, list]:
    rng = random.Random(2)
    lefts, rights = [], []
    # ``keys`` events per second of event time overall: one per key per second.
    for i in range(events):
        key = f"user-{rng.randrange(keys):04d}"
        item = (key, {"ts": T0 + timedelta(microseconds=i * 1_000_000 // keys), "seq": i})
        (lefts if i % 2 else rights).append(item)
    return lefts, rights


def _ts(event: dict) -> datetime:
    return event["ts"]


def _run_interval(
    lefts: list, rights: list, keys: int, *, per_key: bool, counter: list[int]
) -> int:
    flow = Dataflow("bench_interval")
    left = op.input("left", flow, TestingSource(lefts, batch_size=BATCH))
    right = op.input("right", flow, TestingSource(rights, batch_size=BATCH))
    lower, upper, lateness = timedelta(0), timedelta(seconds=10), timedelta(seconds=1)
    shards = _per_key_shards(keys) if per_key else 16
    out = interval_join(
        "interval",
        left,
        right,
        left_ts=_ts,
        lower=lower,
        upper=upper,
        lateness=lateness,
        shards=shards,
    )
    sink = CountSink()
    op.output("out", out.oks, sink)
    run_main(flow)
    counter[0] = sink.counter[0]
    return len(lefts) + len(rights)


def _cpu_timed(
    contenders: dict[str, Callable[[], int]], cpu: dict[str, list[float]]
) -> dict[str, Callable[[], int]]:
    """Wrap each contender to also record items per CPU-second of this process.

    The machine is shared: wall-clock rates move with other people's load,
    CPU time spent by this process much less.
    """

    def wrap(name: str, run: Callable[[], int]) -> Callable[[], int]:
        def timed() -> int:
            start = time.process_time()
            items = run()
            cpu.setdefault(name, []).append(items / max(time.process_time() - start, 1e-9))
            return items

        return timed

    return {name: wrap(name, run) for name, run in contenders.items()}


def _cpu_table(cpu: dict[str, list[float]]) -> str:
    lines = ["  per CPU-second of this process (median over runs incl. warm-up):"]
    for name, rates in cpu.items():
        lines.append(f"  {name:<40} {statistics.median(rates):>18,.0f}")
    return "\n".join(lines)


def _cpu_race(
    title: str, contenders: dict[str, Callable[[], int]], unit: str, rounds: int = 3
) -> dict[str, Any]:
    """Run ``contenders`` in alternating rounds; print their wall-clock and CPU-second tables.

    Returns the measurements and each contender's median items per CPU-second.
    """
    cpu: dict[str, list[float]] = {}
    results = alternate(_cpu_timed(contenders, cpu), rounds=rounds)
    print(format_table(title, results, unit))
    print(_cpu_table(cpu))
    return {
        "results": [m.as_dict() for m in results],
        "per_cpu_second": {k: statistics.median(v) for k, v in cpu.items()},
    }


def main(quick: bool = False) -> dict:
    rounds = 3
    rows = 100_000
    n_events = 100_000 if quick else 500_000
    table, stream = _enrich_data(rows, n_events)
    print(
        f"enrich: {rows:,}-row table, {n_events:,} events, {rounds} alternating rounds", flush=True
    )
    enrich = _cpu_race(
        "Enrichment join (events/s, table load included)",
        {
            "streamml enrich (16 shards)": lambda: _run_enrich(table, stream, per_key=False),
            "stateful_batch per key (baseline)": lambda: _run_enrich(table, stream, per_key=True),
        },
        "events/s",
        rounds,
    )

    keys = 1000
    n_interval = 100_000 if quick else 600_000
    lefts, rights = _interval_data(keys, n_interval)
    pairs = [0]
    print(
        f"\ninterval join: {keys:,} keys, [0, 10 s] interval, {n_interval:,} events, "
        f"{rounds} alternating rounds",
        flush=True,
    )
    interval = _cpu_race(
        "Interval join (input events/s)",
        {
            "streamml interval_join (16 shards)": lambda: _run_interval(
                lefts, rights, keys, per_key=False, counter=pairs
            ),
            "stateful_batch per key (baseline)": lambda: _run_interval(
                lefts, rights, keys, per_key=True, counter=pairs
            ),
        },
        "events/s",
        rounds,
    )
    print(f"  pairs emitted per run: {pairs[0]:,} ({pairs[0] / n_interval:.2f} per input event)")
    frames = frames_main(quick)
    enrich_fraud = enrich_main(quick)
    asof = asof_main(quick)
    label = label_main(quick)
    return {
        "asof": asof,
        "label": label,
        "interval_frames": frames,
        "enrich_fraud": enrich_fraud,
        "enrich": {
            "table_rows": rows,
            "events": n_events,
            **enrich,
        },
        "interval": {
            "keys": keys,
            "events": n_interval,
            "pairs": pairs[0],
            **interval,
        },
    }


def _asof_data(keys: int, n: int) -> tuple[list, list]:
    rng = random.Random(3)
    events, table = [], []
    for i in range(n):
        key = f"acct-{rng.randrange(keys):04d}"
        t = T0 + timedelta(microseconds=i * 1_000_000 // keys)
        if i % 2:
            events.append((key, {"amount": i, "ts": t}))
        else:
            table.append((key, {"limit": i, "from": t}))
    return events, table


def _from(row: dict) -> datetime:
    return row["from"]


def _run_asof(events: list, table: list, keys: int, *, per_key: bool) -> int:
    flow = Dataflow("bench_asof")
    ev = op.input("events", flow, TestingSource(events, batch_size=BATCH))
    tb = op.input("table", flow, TestingSource(table, batch_size=BATCH))
    out = asof_join(
        "asof",
        ev,
        tb,
        ts=_ts,
        table_ts=_from,
        default={},
        lateness=timedelta(seconds=5),
        shards=_per_key_shards(keys) if per_key else 16,
    )
    sink, late = CountSink(), CountSink()
    op.output("out", out.oks, sink)
    op.output("late", out.late, late)
    run_main(flow)
    assert (sink.counter[0], late.counter[0]) == (len(events), 0), (sink.counter, late.counter)
    return len(events) + len(table)


def asof_main(quick: bool = False) -> dict:
    """asof_join (16 shards) next to the same join keyed per account."""
    keys, n = 1000, 100_000 if quick else 400_000
    events, table = _asof_data(keys, n)
    print(f"\nasof join: {keys:,} keys, {n:,} items (half versions), lateness 5 s", flush=True)
    race = _cpu_race(
        "As-of join (input items/s)",
        {
            "streamml asof_join (16 shards)": lambda: _run_asof(events, table, keys, per_key=False),
            "stateful_batch per key (baseline)": lambda: _run_asof(
                events, table, keys, per_key=True
            ),
        },
        "items/s",
    )
    return {"keys": keys, "items": n, **race}


def _label_data(n: int) -> tuple[list, list]:
    rng = random.Random(4)
    preds, labels = [], []
    for i in range(n):
        t = T0 + timedelta(milliseconds=i)
        preds.append(
            (f"e{i}", {"prediction": i % 2, "p": rng.random(), "model_version": "v1", "ts": t})
        )
        delay = timedelta(seconds=2 if i % 3 else 7)  # a third come after max_delay
        labels.append((f"e{i}", {"label": rng.randrange(2), "ts": t + delay}))
    return preds, labels


def _run_label(preds: list, labels: list, *, shards: int, frames: bool = False) -> int:
    """Predictions and labels through label_join: ``(id, event)`` rows, or frames of them."""
    flow = Dataflow("bench_label_frames" if frames else "bench_label")
    batch = 1 if frames else BATCH  # a frame is a batch already
    p = op.input("preds", flow, TestingSource(preds, batch_size=batch))
    lb = op.input("labels", flow, TestingSource(labels, batch_size=batch))
    fields: dict[str, Any] = {"key": "id", "ts": "ts"} if frames else {"ts": _ts}
    out = label_join(
        "label",
        p,
        lb,
        **fields,
        probability="p",
        max_delay=timedelta(seconds=5),
        window=timedelta(seconds=60),
        lateness=timedelta(seconds=10),
        shards=shards,
    )
    done, missed = CountSink(), CountSink()
    op.output("labelled", out.labelled, done)
    op.output("unlabelled", out.unlabelled, missed)
    op.output("metrics", out.metrics, CountSink())
    run_main(flow)
    rows = [sum(f.height for f in side) if frames else len(side) for side in (preds, labels)]
    assert done.counter[0] + missed.counter[0] == rows[0]
    return sum(rows)


def _as_label_frames(items: list) -> list:
    """The same predictions or labels as frames of BATCH rows, the id a column ``id``."""
    import polars as pl

    return [
        pl.DataFrame([{"id": k, **e} for k, e in items[i : i + BATCH]])
        for i in range(0, len(items), BATCH)
    ]


def label_main(quick: bool = False) -> dict:
    """label_join (16 shards) on rows and on frames, next to the same join keyed per event id.

    The per-id baseline holds one Bytewax state per id (its event-time state
    included), so it runs on a tenth of the events. The frames contender gets
    the same predictions and labels as frames of 1,000 rows (built before the
    race, as the rows are).
    """
    n = 100_000 if quick else 400_000
    preds, labels = _label_data(n)
    pred_frames, label_frames = _as_label_frames(preds), _as_label_frames(labels)
    small = n // 10
    print(
        f"\nlabel join: {n:,} predictions, {n:,} labels (per-id baseline: {small:,} each)",
        flush=True,
    )
    race = _cpu_race(
        "Label join (predictions and labels/s)",
        {
            "streamml label_join (16 shards)": lambda: _run_label(preds, labels, shards=16),
            "streamml label_join frames (16 shards)": lambda: _run_label(
                pred_frames, label_frames, shards=16, frames=True
            ),
            "stateful_batch per id (baseline)": lambda: _run_label(
                preds[:small], labels[:small], shards=_per_key_shards(small)
            ),
        },
        "items/s",
    )
    fraud = _fraud_label_race(50_000 if quick else 200_000)
    return {"predictions": n, **race, "fraud_shaped": fraud}


def _fraud_label_data(n: int) -> tuple[list, list]:
    """The fraud example's label join input: unique transaction ids, 92 % labelled one
    minute plus an exponential delay (mean 8 min) later, over two hours; predictions in
    frames of 500 rows, labels in frames of 2,000 (read ahead, as a labels topic is)."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(5)
    start = int(T0.timestamp() * 1000)
    ts = start + np.sort(rng.integers(0, 2 * 3600 * 1000, n))
    ids = np.array([f"tx-{i:07d}" for i in range(n)])
    preds = pl.DataFrame(
        {
            "tx_id": ids,
            "amount": rng.random(n) * 100,
            "fraud_score": rng.random(n),
            "prediction": (rng.random(n) < 0.03).astype(np.int64),
            "model_version": np.where(rng.random(n) < 0.5, "v1", "v2"),
            "ts": pl.Series(ts).cast(pl.Datetime("ms", "UTC")),
        }
    )
    got = np.flatnonzero(rng.random(n) < 0.92)
    label_ts = ts[got] + 60_000 + rng.exponential(8 * 60_000, len(got)).astype(np.int64)
    order = np.argsort(label_ts, kind="stable")
    labels = pl.DataFrame(
        {
            "tx_id": ids[got][order],
            "is_fraud": (rng.random(len(got)) < 0.03).astype(np.int64),
            "ts": pl.Series(label_ts[order]).cast(pl.Datetime("ms", "UTC")),
        }
    )
    return (
        [preds.slice(i, 500) for i in range(0, n, 500)],
        [labels.slice(i, 2000) for i in range(0, labels.height, 2000)],
    )


def _run_fraud_label(preds: list, labels: list, *, frames: bool) -> int:
    """The fraud example's label join (2 shards), on frames or on ``(id, dict)`` rows."""
    flow = Dataflow("bench_label_fraud")
    p = op.input("preds", flow, TestingSource(preds, batch_size=1 if frames else 500))
    lb = op.input("labels", flow, TestingSource(labels, batch_size=1 if frames else 2000))
    fields: dict[str, Any] = {"key": "tx_id", "ts": "ts"} if frames else {"ts": _ts}
    out = label_join(
        "evaluate",
        p,
        lb,
        **fields,
        prediction="prediction",
        label="is_fraud",
        probability="fraud_score",
        max_delay=timedelta(minutes=45),
        window=timedelta(minutes=15),
        lateness=timedelta(hours=3),
        shards=2,
    )
    done, missed = CountSink(), CountSink()
    op.output("labelled", out.labelled, done)
    op.output("unlabelled", out.unlabelled, missed)
    op.output("metrics", out.metrics, CountSink())
    op.output("errs", out.errs, CountSink())
    run_main(flow)
    n = [sum(f.height for f in side) if frames else len(side) for side in (preds, labels)]
    assert done.counter[0] + missed.counter[0] == n[0]
    return sum(n)


def _fraud_label_race(n: int) -> dict:
    """label_join shaped like the fraud example, on frames and on the same rows."""
    pred_frames, label_frames = _fraud_label_data(n)
    pred_rows, label_rows = (
        [(r["tx_id"], r) for f in side for r in f.to_dicts()]
        for side in (pred_frames, label_frames)
    )
    print(f"\nlabel join, fraud-shaped: {n:,} transactions, 2 shards", flush=True)
    race = _cpu_race(
        "Label join, fraud-shaped (predictions and labels/s)",
        {
            "label_join rows (2 shards)": lambda: _run_fraud_label(
                pred_rows, label_rows, frames=False
            ),
            "label_join frames (2 shards)": lambda: _run_fraud_label(
                pred_frames, label_frames, frames=True
            ),
        },
        "items/s",
        rounds=5,
    )
    return {"transactions": n, **race}


def _interval_frames(items: list) -> list:
    """The same events as frames of BATCH rows: key, ts (aware Datetime), seq."""
    import polars as pl

    return [
        pl.DataFrame(
            {
                "user": [k for k, _ in items[i : i + BATCH]],
                "ts": [e["ts"] for _, e in items[i : i + BATCH]],
                "seq": [e["seq"] for _, e in items[i : i + BATCH]],
            }
        )
        for i in range(0, len(items), BATCH)
    ]


def _run_interval_frames(lefts: list, rights: list) -> int:
    flow = Dataflow("bench_interval_frames")
    left = op.input("left", flow, TestingSource(_interval_frames(lefts), batch_size=1))
    right = op.input("right", flow, TestingSource(_interval_frames(rights), batch_size=1))
    out = interval_join(
        "interval",
        left,
        right,
        key="user",
        left_ts="ts",
        lower=timedelta(0),
        upper=timedelta(seconds=10),
        lateness=timedelta(seconds=1),
    )
    op.output("out", out.oks, CountSink())
    run_main(flow)
    return len(lefts) + len(rights)


def frames_main(quick: bool = False) -> dict:
    """interval_join on frames (key= a column) next to the same events as (key, event) rows.

    Frames of 1,000 rows over 16 shards give each shard ~60 rows of a side
    per call: polars' per-call cost is most of it (gathers, the joined
    frame); larger frames amortise it.
    """
    n = 100_000 if quick else 600_000
    lefts, rights = _interval_data(1000, n)
    pairs = [0]
    results = alternate(
        {
            "interval_join rows (16 shards)": lambda: _run_interval(
                lefts, rights, 1000, per_key=False, counter=pairs
            ),
            "interval_join frames (16 shards)": lambda: _run_interval_frames(lefts, rights),
        },
        rounds=3,
    )
    print(format_table("Interval join, rows and frames (input events/s)", results, "events/s"))
    return {"events": n, "results": [m.as_dict() for m in results]}


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] in (["asof"], ["label"], ["enrich"]):  # one: python -m benchmarks.join asof
        {"asof": asof_main, "label": label_main, "enrich": enrich_main}[sys.argv[1]](
            "--quick" in sys.argv
        )
    else:
        main("--quick" in sys.argv)
