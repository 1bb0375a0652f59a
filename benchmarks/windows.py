"""Windows: ``window_agg`` and ``online_scale`` next to what a Bytewax user writes without them.

The events, keys and fields of :mod:`benchmarks.featurize` (1,000 keys, 3
float fields, in-order events one millisecond apart), one Bytewax worker, a
sink that only counts:

- ``window_agg`` (10 s tumbling windows, the same 3 fields × {count, mean,
  std, min, max}) on the ``(key, event)`` rows and on 5,000-row frames, next
  to the baseline a Bytewax user writes without streamml: Bytewax's own
  ``collect_window`` per key with the same event clock and NumPy aggregates
  per closed window (checked to give the same windows first);
- ``online_scale``'s row path next to a per-key ``stateful_map`` with
  Welford's update per event in Python.

Besides wall-clock rates the tables give events per CPU-second of this
process, which other load on a shared machine disturbs much less.

    python -m benchmarks.windows [--quick]
"""

from __future__ import annotations

import math
import os
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

from benchmarks.featurize import (
    AGGS,
    FIELDS,
    FRAME_ROWS,
    N_KEYS,
    T0,
    CountSink,
    _at,
    _flow,
    _frames_runner,
    as_frames,
    make_events,
)
from benchmarks.harness import Measurement, alternate, format_table

WINDOW_LENGTH = timedelta(seconds=10)


def _window_agg(up: Any, **frame_args: Any) -> Any:
    from bytewax.operators.windowing import TumblingWindower
    from streamml.operators.featurize import window_agg

    return window_agg(
        "windows",
        up,
        timestamp=frame_args.pop("timestamp", _at),
        windower=TumblingWindower(WINDOW_LENGTH, align_to=T0),
        fields=list(FIELDS),
        aggregates=list(AGGS),
        idle_advance=False,
        **frame_args,
    ).oks


def _bytewax_windows(keyed: Any) -> Any:
    """Bytewax's windowing as a user would write it: collect each key's window, then NumPy."""
    import numpy as np
    from bytewax.operators.windowing import EventClock, TumblingWindower, collect_window

    frozen = datetime(1970, 1, 1, tzinfo=timezone.utc)
    clock = EventClock(
        _at,
        wait_for_system_duration=timedelta(0),
        now_getter=lambda: frozen,
        to_system_utc=lambda _t: None,
    )
    windower = TumblingWindower(WINDOW_LENGTH, align_to=T0)
    collected = collect_window("collect", keyed, clock, windower).down

    def aggregate(item: tuple[str, tuple[int, list]]) -> tuple[str, dict[str, Any]]:
        key, (wid, events) = item
        x = np.array([[e[f] for f in FIELDS] for e in events])
        row: dict[str, Any] = {"key": key, "window_start": T0 + wid * WINDOW_LENGTH}
        for j, f in enumerate(FIELDS):
            col = x[:, j]
            row.update(
                {
                    f"{f}_count": float(len(col)),
                    f"{f}_mean": float(col.mean()),
                    f"{f}_std": float(col.std()),
                    f"{f}_min": float(col.min()),
                    f"{f}_max": float(col.max()),
                }
            )
        return key, row

    return op.map("aggregate", collected, aggregate)


def _check_same_windows(events: list) -> None:
    """window_agg (rows and frames) and the Bytewax baseline give the same windows."""
    from bytewax.testing import TestingSink

    got: dict[str, list] = {}
    for name in ("rows", "frames", "bytewax"):
        out: list = []
        flow = Dataflow(f"check_{name}")
        if name == "frames":
            up = op.input("in", flow, TestingSource(as_frames(events)))
            op.output("out", _window_agg(up, key="sensor", timestamp="at"), TestingSink(out))
            rows = [r for f in out for r in f.to_dicts()]
        else:
            up = op.input("in", flow, TestingSource(events, batch_size=FRAME_ROWS))
            featurize = _window_agg if name == "rows" else _bytewax_windows
            op.output("out", featurize(up), TestingSink(out))
            rows = [r for _, r in out]
        got[name] = sorted(rows, key=lambda r: (r["key"], r["window_start"]))
    for a, b, c in zip(got["rows"], got["frames"], got["bytewax"], strict=True):
        for k, v in c.items():
            if k.startswith(FIELDS) and not (
                math.isclose(a[k], v, rel_tol=1e-9, abs_tol=1e-9)
                and math.isclose(b[k], v, rel_tol=1e-9, abs_tol=1e-9)
            ):
                raise AssertionError(f"windows differ: {k} {a[k]} {b[k]} != {v}")


_SCALED = tuple((j, f, f + "_scaled") for j, f in enumerate(FIELDS))


def _welford_step(state: tuple | None, event: dict[str, Any]) -> tuple[tuple, dict]:
    """Per key: count, means and squared deviations; each event scaled by its key's so far.

    As a careful user writes it: output names made once, the event copied once and the
    scaled fields written into the copy, the running values in locals (an earlier version
    built the names per event and merged two dicts: 0.79-0.83x of this one per CPU-second).
    """
    n, mean, m2 = state if state is not None else (0, [0.0] * len(FIELDS), [0.0] * len(FIELDS))
    n += 1
    out = dict(event)
    for j, f, name in _SCALED:
        v = event[f]
        mu = mean[j]
        d = v - mu
        mu += d / n
        q = m2[j] + d * (v - mu)
        mean[j], m2[j] = mu, q
        std = math.sqrt(q / n)
        out[name] = (v - mu) / (std if std > 0 else 1.0)
    return (n, mean, m2), out


def windows_throughput(quick: bool) -> dict[str, Any]:
    """``window_agg`` on rows and frames, and ``online_scale`` on rows, next to their baselines."""
    from streamml.operators.featurize import online_scale

    n = 100_000 if quick else 1_000_000
    rounds = 3 if quick else 5
    events = make_events(n)
    frames = as_frames(events)
    _check_same_windows(events[:20_000])
    print("windows: window_agg and Bytewax's windows agree on 20,000 events; timing ...")
    cpu: dict[str, list[float]] = {}

    def rows_run(name: str, featurize: Any) -> Any:
        def run() -> int:
            sink = CountSink()
            start = time.process_time()
            run_main(_flow(events, sink, featurize))
            cpu.setdefault(name, []).append(n / (time.process_time() - start))
            return n

        return run

    def scale(up: Any) -> Any:
        return online_scale("z", up, fields=list(FIELDS)).oks

    def welford(up: Any) -> Any:
        return op.stateful_map("welford", up, _welford_step)

    rows_name = "window_agg on (key, event) rows"
    frames_name = f"window_agg on frames ({FRAME_ROWS:,} rows)"
    bytewax_name = "Bytewax collect_window + NumPy"
    scale_name = "online_scale on (key, event) rows"
    welford_name = "per-key stateful_map, Welford"
    plans = {
        "windows": {
            rows_name: rows_run(rows_name, _window_agg),
            frames_name: _frames_runner(
                "bench_windows_frames",
                frames,
                lambda up: _window_agg(up, key="sensor", timestamp="at"),
                cpu.setdefault(frames_name, []),
                events=n,  # events in (a window row is 1,000 events' work)
            ),
            bytewax_name: rows_run(bytewax_name, _bytewax_windows),
        },
        "scale": {
            scale_name: rows_run(scale_name, scale),
            welford_name: rows_run(welford_name, welford),
        },
    }
    out: dict[str, Any] = {"events": n, "keys": N_KEYS}
    titles = {
        "windows": f"window_agg: {n:,} events, {N_KEYS:,} keys, 10 s tumbling windows, 3 fields"
        " x {count, mean, std, min, max}, 1 worker (events in per second)",
        "scale": f"online_scale: {n:,} events, {N_KEYS:,} keys, 3 fields, 1 worker",
    }
    for family, contenders in plans.items():
        results = alternate(contenders, rounds=rounds, warmup=not quick)
        print(format_table(titles[family] + " (wall clock)", results, unit="events/s"))
        per_cpu = [Measurement(m.name, m.items, cpu[m.name][-rounds:]) for m in results]
        print(format_table(titles[family] + " (per CPU-second)", per_cpu, unit="events/cpu-s"))
        out[family] = {
            "results": [m.as_dict() for m in results],
            "results_per_cpu_second": [m.as_dict() for m in per_cpu],
        }
    print(f"  load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return out


def main(quick: bool = False) -> dict:
    """Run the window and scaling benchmarks, print their tables, return the figures."""
    return windows_throughput(quick)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
