"""Sketches: ``window_agg`` keeping a summary per window next to keeping the window's rows.

Two races, each contender in the same process, alternating rounds, on frames
of 5,000 rows, one Bytewax worker, a sink that only counts:

- **long windows**: one key at a high rate, 1-hour tumbling windows (two of
  them), ``count``, ``mean`` and ``approx_p99`` (a KLL sketch per window:
  the state is a summary) next to the same with the exact ``p99`` (the
  state keeps every row of the open window). Besides the rates, each
  contender's peak of traced memory (``tracemalloc``, one run, the input
  frames built before) and the size of its state's snapshot half-way;
- **many keys, short windows** (the default aggregates ``count, mean, std,
  min, max``, 1,000 keys, 10 s windows): the summaries against the row
  state computing the same aggregates (forced by patching the choice,
  ``_window_core.mergeable``, for this contender only), so a change of the
  default path shows.

    python -m benchmarks.sketch [--quick]
"""

from __future__ import annotations

import os
import pickle
import sys
import time
import tracemalloc
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any
from unittest import mock

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import TumblingWindower
from bytewax.testing import TestingSource, run_main

from benchmarks.harness import (
    CountSink,
    alternate,
    format_table,
    per_cpu_second,
    with_cpu_rates,
)

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
ROWS = 5_000


def _frames(n: int, keys: int, span: timedelta, seed: int = 11) -> list[pl.DataFrame]:
    """``n`` readings of ``keys`` sensors spread evenly over ``span``, in time order."""
    rng = np.random.default_rng(seed)
    at = np.linspace(0, span / timedelta(microseconds=1), n, endpoint=False).astype(np.int64)
    frame = pl.DataFrame(
        {
            "sensor": [f"s{k}" for k in rng.integers(0, keys, n)],
            "at": pl.Series(at + int(T0.timestamp() * 1e6)).cast(pl.Datetime("us", "UTC")),
            "x": rng.lognormal(size=n),
        }
    )
    return [frame.slice(i, ROWS) for i in range(0, n, ROWS)]


def _flow(frames: list[pl.DataFrame], aggs: list[str], length: timedelta, sink: Any) -> Dataflow:
    from streamml.operators.featurize import window_agg

    flow = Dataflow("bench_sketch")
    up = op.input("in", flow, TestingSource(frames, batch_size=1))
    out = window_agg(
        "w",
        up,
        key="sensor",
        timestamp="at",
        windower=TumblingWindower(length, align_to=T0),
        fields={"x": aggs},
        idle_advance=False,
    )
    op.output("out", out.oks, sink)
    return flow


def _runner(
    frames: list[pl.DataFrame], aggs: list[str], length: timedelta, rows: bool = False
) -> Callable[[], int]:
    """A run over ``frames`` counting events in; ``rows`` forces the row state."""
    events = sum(f.height for f in frames)

    def run() -> int:
        flow = _flow(frames, aggs, length, CountSink())
        if rows:
            with mock.patch("streamml.operators.featurize._window_core.mergeable", lambda a: False):
                run_main(flow)
        else:
            run_main(flow)
        return events

    return run


def _memory(frames: list[pl.DataFrame], aggs: list[str], length: timedelta) -> dict[str, float]:
    """Peak traced memory of one run, and the state's snapshot size half-way (one shard's
    ``Windows``, fed the first half of the frames directly)."""
    from streamml.operators.featurize import windows as windows_module

    tracemalloc.start()
    run_main(_flow(frames, aggs, length, CountSink()))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    logic = windows_module._FrameLogic(_spec(aggs, length), "sensor", "at", None)
    for frame in frames[: len(frames) // 2]:
        logic.on_batch([frame])
    state = len(pickle.dumps(logic.snapshot()))
    return {"peak_traced_mb": peak / 1e6, "state_bytes_half_way": state}


def _spec(aggs: list[str], length: timedelta) -> Any:
    """The spec ``window_agg`` builds for these aggregates (for the state-size probe)."""
    from streamml.operators.featurize._window_core import Fixed, Spec

    us = length // timedelta(microseconds=1)
    return Spec(
        step_id="w",
        fields=("x",),
        plan=tuple((0, a) for a in aggs),
        names=tuple(f"x_{a}" for a in aggs),
        windows=Fixed(us, us, int(T0.timestamp() * 1e6)),
        max_delay=timedelta(0),
        ttl=None,
        max_future=None,
        idle_advance=False,
    )


def _race(title: str, contenders: dict[str, Callable[[], int]], rounds: int, quick: bool) -> dict:
    runs, cpu = with_cpu_rates(contenders)
    results = alternate(runs, rounds=rounds, warmup=not quick)
    per_cpu = per_cpu_second(results, cpu)
    print(format_table(title + " (wall clock)", results, unit="events/s"), flush=True)
    print(format_table(title + " (per CPU-second)", per_cpu, unit="events/cpu-s"), flush=True)
    return {
        "results": [m.as_dict() for m in results],
        "results_per_cpu_second": [m.as_dict() for m in per_cpu],
        "ratio_per_cpu_second": per_cpu[0].median / per_cpu[1].median,
    }


def long_windows(quick: bool) -> dict[str, Any]:
    """One key, two 1-hour windows: approx_p99 (summaries) against exact p99 (rows)."""
    n = 400_000 if quick else 2_000_000
    rounds = 3 if quick else 5
    hour = timedelta(hours=1)
    frames = _frames(n, 1, 2 * hour)
    plans = {"approx_p99 (KLL summary)": ["count", "mean", "approx_p99"]}
    plans["p99 (exact: the window's rows)"] = ["count", "mean", "p99"]
    title = (
        f"window_agg: {n:,} events of 1 key over 2 h, 1-hour tumbling windows, frames of {ROWS:,}"
    )
    out = _race(
        title, {name: _runner(frames, aggs, hour) for name, aggs in plans.items()}, rounds, quick
    )
    out["memory"] = {name: _memory(frames, aggs, hour) for name, aggs in plans.items()}
    for name, figures in out["memory"].items():
        print(
            f"  {name}: peak traced {figures['peak_traced_mb']:.1f} MB, state half-way "
            f"{figures['state_bytes_half_way']:,} bytes",
            flush=True,
        )
    mem = list(out["memory"].values())
    out["peak_ratio"] = mem[1]["peak_traced_mb"] / mem[0]["peak_traced_mb"]
    out["state_ratio"] = mem[1]["state_bytes_half_way"] / mem[0]["state_bytes_half_way"]
    print(
        f"  exact/approx: peak memory {out['peak_ratio']:.1f}x, state {out['state_ratio']:.0f}x; "
        f"approx/exact throughput per CPU-second {out['ratio_per_cpu_second']:.2f}x",
        flush=True,
    )
    return {"events": n, **out}


def many_keys(quick: bool) -> dict[str, Any]:
    """1,000 keys, 10 s windows, the default aggregates: summaries against rows."""
    n = 200_000 if quick else 1_000_000
    rounds = 3 if quick else 5
    ten = timedelta(seconds=10)
    frames = _frames(n, 1_000, timedelta(seconds=n // 1000))
    aggs = ["count", "mean", "std", "min", "max"]
    title = f"window_agg: {n:,} events, 1,000 keys, 10 s windows, count/mean/std/min/max"
    contenders = {
        "summaries (today's choice)": _runner(frames, aggs, ten),
        "rows (forced)": _runner(frames, aggs, ten, rows=True),
    }
    return {"events": n, **_race(title, contenders, rounds, quick)}


def main(quick: bool = False) -> dict:
    """Run both races, print their tables, return the figures."""
    start = time.perf_counter()
    out = {"long_windows": long_windows(quick), "many_keys": many_keys(quick)}
    print(
        f"  load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
        f"{time.perf_counter() - start:.0f} s",
        flush=True,
    )
    return out


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
