"""Featurization: ``rolling`` next to a per-event implementation, and its memory bound.

One Bytewax worker, an in-memory source (``TestingSource``, batches of
``SOURCE_BATCH``), 1,000 keys, 3 float fields × {count, mean, std, min, max}
over a 60 s event-time window, in-order events one millisecond apart (so
about 60 events per key per window). The source yields ``(key, event)``
pairs — as a decoder keyed by the Kafka message key would — into the
featurizer, then a sink that only counts:

- ``rolling`` with 1 shard and with its default 8 shards;
- ``rolling`` with 5 s of allowed out-of-orderness on jittered events;
- ``rolling`` fed source batches of 50,000 (its per-batch work on the
  window state is then spread over more events);
- the baseline: ``op.stateful_map`` per key with a deque of the window's
  events, recomputing the 15 aggregates in Python for every event
  (checked to give the same features first).

Frames: the same events as ``polars`` frames of 5,000 rows (the batch
unit), through ``rolling(key=..., timestamp=...)`` with a count window and
a time window — the mean of each key's last 10 readings and of its last
60 s, one field — next to the row path on the same features (source
batches of 5,000), alternating in one process. The target: at least
1,000,000 events/s on frames.

Aggregates: ``rolling`` on the same frames (one field rounded to whole
degrees, last 10 and last 60 s) with each newer aggregate — exact and
approximate distinct counts, top-1 with its count, first, a 4-bin histogram
— next to today's ``mean`` and exact ``p50``, alternating in one process.

Memory: 100,000 keys × 10 events through ``rolling`` (``ttl`` 2 min); RSS
growth of the process when they are all in state, then after later events
move event time past their TTL.

``window_agg`` and ``online_scale`` on the same events are the family
:mod:`benchmarks.windows`.

The machine may be shared: besides wall-clock rates the tables give events
per CPU-second of this process, which other load disturbs much less.
"""

from __future__ import annotations

import gc
import math
import os
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import polars as pl
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource, run_main
from streamml.operators.featurize import rolling

from benchmarks.harness import Measurement, alternate, format_table

N_KEYS = 1_000
FIELDS = ("temperature", "pressure", "humidity")
AGGS = ("count", "mean", "std", "min", "max")
WINDOW = timedelta(seconds=60)
SOURCE_BATCH = 10_000
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import resource

    return pages * resource.getpagesize() / 2**20


class _CountPartition(StatelessSinkPartition):
    def __init__(self, sink: CountSink) -> None:
        self._sink = sink

    def write_batch(self, items: list) -> None:
        self._sink.count += len(items)
        if self._sink.probe is not None:
            for key, _ in items:
                if key == "__probe__":
                    self._sink.probe.append(_rss_mb())


class CountSink(DynamicSink):
    """Counts what arrives; with ``probe`` a list, records RSS when a ``__probe__`` key passes."""

    def __init__(self, probe: list[float] | None = None) -> None:
        self.count = 0
        self.probe = probe

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CountPartition:
        return _CountPartition(self)


def make_events(n: int, *, jitter_ms: int = 0, seed: int = 7) -> list[tuple[str, dict[str, Any]]]:
    """``n`` keyed sensor readings over ``N_KEYS`` keys, one millisecond apart (optionally
    jittered)."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        ms = i + (rnd.randint(-jitter_ms, 0) if jitter_ms else 0)
        key = f"s{rnd.randrange(N_KEYS)}"
        out.append(
            (
                key,
                {
                    "sensor": key,
                    "at": T0 + timedelta(milliseconds=ms),
                    "temperature": 20.0 + rnd.gauss(0, 2),
                    "pressure": 1000.0 + rnd.gauss(0, 5),
                    "humidity": rnd.uniform(30, 60),
                },
            )
        )
    return out


def _at(e: dict[str, Any]) -> datetime:
    return e["at"]


# -- the straightforward per-event implementation --------------------------------


def _baseline_step(state: deque | None, event: dict[str, Any]) -> tuple[deque, dict[str, Any]]:
    """Append, drop what left the window, recompute every aggregate from the deque."""
    window = state if state is not None else deque()
    t = event["at"]
    window.append(event)
    while window[0]["at"] <= t - WINDOW:
        window.popleft()
    features = {}
    n = len(window)
    for f in FIELDS:
        values = [e[f] for e in window]
        mean = sum(values) / n
        features[f"{f}_count_60s"] = float(n)
        features[f"{f}_mean_60s"] = mean
        features[f"{f}_std_60s"] = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
        features[f"{f}_min_60s"] = min(values)
        features[f"{f}_max_60s"] = max(values)
    return window, {**event, **features}


def _flow(events: list, sink: CountSink, featurize: Any, batch: int = SOURCE_BATCH) -> Dataflow:
    flow = Dataflow("bench_featurize")
    keyed = op.input("in", flow, TestingSource(events, batch_size=batch))
    op.output("out", featurize(keyed), sink)
    return flow


def _ours(shards: int, max_delay: timedelta = timedelta(0)) -> Any:
    def featurize(keyed: Any) -> Any:
        return rolling(
            "rolling",
            keyed,
            timestamp=_at,
            window=WINDOW,
            fields=list(FIELDS),
            aggregates=list(AGGS),
            max_delay=max_delay,
            shards=shards,
        ).oks

    return featurize


def _baseline(keyed: Any) -> Any:
    return op.stateful_map("per_event", keyed, _baseline_step)


def _runner(events: list, featurize: Any, cpu_rates: list[float], batch: int = SOURCE_BATCH) -> Any:
    """A zero-argument run for the harness; also records events per CPU-second of the process."""

    def run() -> int:
        sink = CountSink()
        cpu = time.process_time()
        run_main(_flow(events, sink, featurize, batch))
        cpu_rates.append(sink.count / (time.process_time() - cpu))
        return sink.count

    return run


def _check_same_features(events: list) -> None:
    """The baseline and ``rolling`` agree on the first events (so the comparison is fair)."""
    from bytewax.testing import TestingSink

    got: dict[str, list] = {}
    for name, featurize in (("ours", _ours(8)), ("baseline", _baseline)):
        out: list = []
        flow = Dataflow("check")
        keyed = op.input("in", flow, TestingSource(events, batch_size=1000))
        op.output("out", featurize(keyed), TestingSink(out))
        run_main(flow)
        got[name] = sorted(out, key=lambda kv: (kv[1]["at"], kv[0]))
    for (_, a), (_, b) in zip(got["ours"], got["baseline"], strict=True):
        for k, v in b.items():
            if k.endswith("_60s") and not math.isclose(a[k], v, rel_tol=1e-9, abs_tol=1e-9):
                raise AssertionError(f"features differ: {k} {a[k]} != {v}")


def throughput(quick: bool) -> dict[str, Any]:
    n = 100_000 if quick else 1_000_000
    rounds = 3 if quick else 5
    print(f"featurize: generating {n:,} events over {N_KEYS:,} keys ...", flush=True)
    events = make_events(n)
    jittered = make_events(n, jitter_ms=5_000)
    _check_same_features(events[:20_000])
    print("featurize: baseline and rolling agree on 20,000 events; timing ...", flush=True)
    cpu: dict[str, list[float]] = {}
    plan = {
        "rolling, 1 shard": (events, _ours(1), SOURCE_BATCH),
        "rolling, 8 shards (default)": (events, _ours(8), SOURCE_BATCH),
        "rolling, 1 shard, 5 s out-of-order": (
            jittered,
            _ours(1, timedelta(seconds=5)),
            SOURCE_BATCH,
        ),
        "rolling, 1 shard, source batches of 50k": (events, _ours(1), 50_000),
        # ~30k events/s: a fifth of the events gives its per-event rate in a fifth of the time
        "per-event baseline (deque, recompute)": (events[: n // 5], _baseline, SOURCE_BATCH),
    }
    contenders = {
        name: _runner(ev, f, cpu.setdefault(name, []), batch)
        for name, (ev, f, batch) in plan.items()
    }
    results = alternate(contenders, rounds=rounds, warmup=not quick)
    title = (
        f"rolling: {n:,} events, {N_KEYS:,} keys, 3 fields x {{count, mean, std, min, max}}"
        " over 60 s, 1 worker"
    )
    print(format_table(title + " (wall clock)", results, unit="events/s"), flush=True)
    # the machine is shared: events per CPU-second of this process is the steadier figure
    per_cpu = [Measurement(m.name, m.items, cpu[m.name][-rounds:]) for m in results]
    print(format_table(title + " (per CPU-second)", per_cpu, unit="events/cpu-s"), flush=True)
    print(f"  load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    by_name = {m.name: m.median for m in results}
    speedup = by_name["rolling, 1 shard"] / by_name["per-event baseline (deque, recompute)"]
    print(
        f"  speed-up over the per-event baseline (1 shard, wall clock): {speedup:.1f}x", flush=True
    )
    return {
        "events": n,
        "keys": N_KEYS,
        "results": [m.as_dict() for m in results],
        "results_per_cpu_second": [m.as_dict() for m in per_cpu],
        "speedup_vs_per_event": speedup,
    }


FRAME_ROWS = 5_000


def as_frames(
    events: list[tuple[str, dict[str, Any]]], rows: int = FRAME_ROWS
) -> list[pl.DataFrame]:
    """The events as frames of ``rows`` rows: ``sensor``, ``at`` (UTC ``Datetime``), the fields."""
    frame = pl.DataFrame(
        {
            "sensor": [e["sensor"] for _, e in events],
            "at": pl.Series([e["at"] for _, e in events], dtype=pl.Datetime("us", "UTC")),
            **{f: [e[f] for _, e in events] for f in FIELDS},
        }
    )
    return [frame.slice(i, rows) for i in range(0, frame.height, rows)]


class _RowCountPartition(StatelessSinkPartition):
    def __init__(self, sink: FrameCountSink) -> None:
        self._sink = sink

    def write_batch(self, items: list) -> None:
        self._sink.count += sum(frame.height for frame in items)


class FrameCountSink(DynamicSink):
    """Counts the rows of the frames that arrive."""

    def __init__(self) -> None:
        self.count = 0

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RowCountPartition:
        return _RowCountPartition(self)


def _mean_last10_and_60s(up: Any, **frame_args: Any) -> Any:
    return rolling(
        "rolling",
        up,
        timestamp=frame_args.pop("timestamp", _at),
        last=10,
        window=WINDOW,
        fields=["temperature"],
        aggregates=["mean"],
        shards=1,
        **frame_args,
    ).oks


def _frames_runner(
    name: str,
    frames: list[pl.DataFrame],
    featurize: Callable[[Any], Any],
    cpu_rates: list[float],
    events: int | None = None,
) -> Callable[[], int]:
    """A zero-argument run of ``featurize(up)`` over ``frames``, one a batch, for the harness.

    Counts ``events`` per run (default: the rows that come out) and records
    them per CPU-second of the process in ``cpu_rates``.
    """

    def run() -> int:
        sink = FrameCountSink()
        cpu = time.process_time()
        flow = Dataflow(name)
        up = op.input("in", flow, TestingSource(frames, batch_size=1))
        op.output("out", featurize(up), sink)
        run_main(flow)
        count = sink.count if events is None else events
        cpu_rates.append(count / (time.process_time() - cpu))
        return count

    return run


def _check_frames_match_rows(events: list, frames: list[pl.DataFrame]) -> None:
    """The frame path and the row path give the same features on the first events."""
    from bytewax.testing import TestingSink

    rows: list = []
    flow = Dataflow("check_rows")
    keyed = op.input("in", flow, TestingSource(events, batch_size=FRAME_ROWS))
    op.output("out", _mean_last10_and_60s(keyed), TestingSink(rows))
    run_main(flow)
    out: list = []
    flow = Dataflow("check_frames")
    up = op.input("in", flow, TestingSource(frames))
    op.output("out", _mean_last10_and_60s(up, key="sensor", timestamp="at"), TestingSink(out))
    run_main(flow)
    got = pl.concat(out).sort("at")
    want = sorted((e for _, e in rows), key=lambda e: e["at"])
    for name in ("temperature_mean_last10", "temperature_mean_60s"):
        for a, b in zip(got[name].to_list(), (e[name] for e in want), strict=True):
            if not math.isclose(a, b, rel_tol=1e-9):
                raise AssertionError(f"frames and rows differ: {name} {a} != {b}")


def frames_throughput(quick: bool) -> dict[str, Any]:
    """``rolling`` on frames next to the row path: last-10 and 60 s mean of one field."""
    n = 200_000 if quick else 1_000_000
    rounds = 3 if quick else 5
    events = make_events(n)
    frames = as_frames(events)
    _check_frames_match_rows(events[:20_000], as_frames(events[:20_000]))
    print("featurize: frames and rows agree on 20,000 events; timing ...", flush=True)
    cpu: dict[str, list[float]] = {}
    frames_name = f"rolling on frames ({FRAME_ROWS:,} rows)"
    rows_name = f"rolling on (key, event) rows (batches of {FRAME_ROWS:,})"
    rows_featurize = _mean_last10_and_60s
    contenders = {
        frames_name: _frames_runner(
            "bench_featurize_frames",
            frames,
            lambda up: _mean_last10_and_60s(up, key="sensor", timestamp="at"),
            cpu.setdefault(frames_name, []),
        ),
        rows_name: _runner(events, rows_featurize, cpu.setdefault(rows_name, []), FRAME_ROWS),
    }
    results = alternate(contenders, rounds=rounds, warmup=not quick)
    title = (
        f"rolling: {n:,} events, {N_KEYS:,} keys in random order, mean of the last 10 and of"
        " the last 60 s (1 field), 1 worker, shards=1"
    )
    print(format_table(title + " (wall clock)", results, unit="events/s"), flush=True)
    per_cpu = [Measurement(m.name, m.items, cpu[m.name][-rounds:]) for m in results]
    print(format_table(title + " (per CPU-second)", per_cpu, unit="events/cpu-s"), flush=True)
    rate = results[0].median
    print(
        f"  frames: {rate:,.0f} events/s (target >= 1,000,000); "
        f"{rate / results[1].median:.1f}x the row path",
        flush=True,
    )
    return {
        "events": n,
        "keys": N_KEYS,
        "frame_rows": FRAME_ROWS,
        "results": [m.as_dict() for m in results],
        "results_per_cpu_second": [m.as_dict() for m in per_cpu],
        "frames_events_per_s": rate,
    }


NEW_AGGREGATES = {
    "mean (today's)": ["mean"],
    "p50 (exact, today's)": ["p50"],
    "distinct": ["distinct"],
    "approx_distinct": ["approx_distinct"],
    "top1 + top1_count": ["top1", "top1_count"],
    "first": ["first"],
    "histogram (4 bins)": ["bin14_18", "bin18_20", "bin20_22", "bin22_26"],
}
"""The aggregates :func:`aggregates_throughput` times, each in its own ``rolling`` step."""


def _aggregate_runner(frames: list[pl.DataFrame], aggs: list[str], cpu_rates: list[float]) -> Any:
    def featurize(up: Any) -> Any:
        return rolling(
            "rolling",
            up,
            key="sensor",
            timestamp="at",
            last=10,
            window=WINDOW,
            fields=["temperature"],
            aggregates=aggs,
            shards=1,
        ).oks

    return _frames_runner("bench_featurize_aggregates", frames, featurize, cpu_rates)


def aggregates_throughput(quick: bool) -> dict[str, Any]:
    """``rolling`` on frames with each newer aggregate next to today's ``mean`` (and exact
    ``p50``): the last 10 readings and the last 60 s of one field, rounded to whole degrees
    (about 12 distinct values per window, so the frequency aggregates have repeats to count)."""
    n = 100_000 if quick else 500_000
    rounds = 3 if quick else 5
    frames = [f.with_columns(pl.col("temperature").round(0)) for f in as_frames(make_events(n))]
    cpu: dict[str, list[float]] = {}
    contenders = {
        name: _aggregate_runner(frames, aggs, cpu.setdefault(name, []))
        for name, aggs in NEW_AGGREGATES.items()
    }
    print("featurize: aggregates on frames; timing ...", flush=True)
    results = alternate(contenders, rounds=rounds, warmup=not quick)
    title = (
        f"rolling aggregates: {n:,} events, {N_KEYS:,} keys, last 10 and last 60 s of one field"
        f" (frames of {FRAME_ROWS:,}), 1 worker, shards=1"
    )
    print(format_table(title + " (wall clock)", results, unit="events/s"), flush=True)
    per_cpu = [Measurement(m.name, m.items, cpu[m.name][-rounds:]) for m in results]
    print(format_table(title + " (per CPU-second)", per_cpu, unit="events/cpu-s"), flush=True)
    return {
        "events": n,
        "results": [m.as_dict() for m in results],
        "results_per_cpu_second": [m.as_dict() for m in per_cpu],
    }


def memory(keys: int = 100_000) -> dict[str, Any]:
    """RSS growth with ``keys`` keys x 10 events in state, and after they pass their TTL."""
    per_key = 10
    ttl = timedelta(minutes=2)
    events: list[dict[str, Any]] = []
    for j in range(per_key):
        for k in range(keys):  # event time: 10 s across the phase
            ms = j * 1000 + k * 1000 // keys
            events.append({"sensor": f"m{k}", "at": T0 + timedelta(milliseconds=ms), "x": 1.0})
    later = T0 + timedelta(seconds=10)
    probe = {"sensor": "__probe__", "at": later, "x": 1.0}
    tail = []  # 200 keys carry on for 4 minutes of event time: past every idle key's TTL
    for s in range(0, 240):
        for k in range(200):
            at = later + timedelta(seconds=s, milliseconds=k)
            tail.append({"sensor": f"t{k}", "at": at, "x": 1.0})
    items = events + [probe] + tail + [dict(probe, at=later + timedelta(minutes=5))]
    gc.collect()
    before = _rss_mb()
    samples: list[float] = []
    sink = CountSink(probe=samples)
    flow = Dataflow("bench_memory")
    up = op.input("in", flow, TestingSource(items, batch_size=SOURCE_BATCH))
    keyed = op.key_on("key", up, lambda e: e["sensor"])
    feats = rolling(
        "rolling",
        keyed,
        timestamp=_at,
        window=WINDOW,
        fields=["x"],
        aggregates=list(AGGS),
        ttl=ttl,
        shards=1,
    )
    op.output("out", feats.oks, sink)
    print(f"featurize: memory, {keys:,} keys x {per_key} events (ttl {ttl}) ...", flush=True)
    run_main(flow)
    full, after = samples[0] - before, samples[-1] - before
    print(
        f"memory: RSS growth with {keys:,} keys x {per_key} events in state: {full:,.0f} MB;"
        f" after they pass their TTL: {after:,.0f} MB (target < 300 MB)",
        flush=True,
    )
    return {"keys": keys, "events_per_key": per_key, "rss_growth_mb": full, "after_ttl_mb": after}


def _memory_in_fresh_process(keys: int) -> dict[str, Any]:
    """:func:`memory` in its own interpreter: after the throughput runs, this process's freed
    heap would absorb the new state and hide the growth (a suite run printed +0 MB)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    code = (
        f"import json; from benchmarks.featurize import memory; print(json.dumps(memory({keys})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = proc.stdout.strip().splitlines()
    print("\n".join(lines[:-1]), flush=True)
    return json.loads(lines[-1])


def main(quick: bool = False) -> dict:
    """Run the featurization benchmarks, print their tables, return the figures."""
    keys = 20_000 if quick else 100_000  # quick: a smoke test of the TTL; the target is for 100k
    return {
        "throughput": throughput(quick),
        "frames": frames_throughput(quick),
        "aggregates": aggregates_throughput(quick),
        "memory": _memory_in_fresh_process(keys),
    }


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
