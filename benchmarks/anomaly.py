"""Anomaly windows: detection quality on the generated NAB-style set, and throughput.

Quality: the z-score, robust (median/MAD), EWMA and model-based
(IsolationForest built with scikit-learn, converted with skl2onnx, served
in the dataflow by :func:`streamml.operators.infer.infer` on ONNX Runtime)
detectors, each scored with
:func:`streamml.evaluation.score_windows` on :func:`streamml.evaluation.sensor_set`:
windows found, precision and recall of windows, median detection delay (true
start to the "opened" alert) and that delay as a fraction of the mean true
window length. The issue's goal for the best detector: recall >= 0.9 at
precision >= 0.8, delay ratio < 0.1.

Throughput: events per second through score + anomaly windows on one
worker, 1,000 keys, in-memory source, next to the engine's ceiling (a
pass-through ``stateful_batch`` on the same input) and the two-step form
(:func:`score` then :func:`anomaly_windows`); each on ``(key, event)`` rows
(5,000 per batch) and on frames (the same events, 5,000 rows per frame).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from streamml.operators.anomaly import (
    Combined,
    Ewma,
    FixedThreshold,
    QuantileThreshold,
    RobustZScore,
    ZScore,
    anomaly_windows,
    inactivity,
    score,
)

from benchmarks.harness import CountSink, alternate, format_table
from streamml.evaluation import SensorSet, TrueWindow, score_windows, sensor_set

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
WINDOW_RULES = dict(cooldown=10 * MINUTE, gap=30 * MINUTE, max_duration=6 * HOUR, alerts=True)


# ------------------------------------------------------------------ quality


def _rolling(x: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the ``w`` points before each point (the point itself excluded)."""
    c1 = np.concatenate([[0.0], np.cumsum(x)])
    c2 = np.concatenate([[0.0], np.cumsum(x * x)])
    i = np.arange(len(x))
    lo = np.maximum(i - w, 0)
    n = np.maximum(i - lo, 1)
    m = (c1[i] - c1[lo]) / n
    return m, np.sqrt(np.maximum((c2[i] - c2[lo]) / n - m * m, 1e-12))


def _features(x: np.ndarray) -> np.ndarray:
    """Point-in-time features of one key's series: z vs 1 h and 6 h, short level, jumpiness."""
    m60, s60 = _rolling(x, 60)
    m360, s360 = _rolling(x, 360)
    i = np.arange(len(x))
    c = np.concatenate([[0.0], np.cumsum(x)])
    lo5 = np.maximum(i - 4, 0)
    m5 = (c[i + 1] - c[lo5]) / (i + 1 - lo5)
    d = np.abs(np.diff(x, prepend=x[0]))
    cd = np.concatenate([[0.0], np.cumsum(d)])
    lo10 = np.maximum(i - 9, 0)
    d10 = (cd[i + 1] - cd[lo10]) / (i + 1 - lo10)
    md60, _ = _rolling(d, 60)
    return np.stack(
        [
            (x - m60) / s60,
            (m5 - m60) / s60,
            np.log((d10 + 1e-9) / (md60 + 1e-9)),
            (x - m360) / s360,
        ],
        axis=1,
    ).astype(np.float32)


def _isolation_forest(data: SensorSet) -> tuple[list[tuple[str, dict]], Any, FixedThreshold]:
    """Train an IsolationForest on every key's anomaly-free first day and export it to ONNX.

    Returns the keyed events with their point-in-time ``features`` (float32
    rows), the model as :class:`streamml.models.OnnxModel` (served in the
    dataflow by :func:`streamml.operators.infer.infer`), and a threshold at
    high quantiles of the training scores (score = minus the forest's
    decision function, so higher is more anomalous).
    """
    from skl2onnx import to_onnx
    from sklearn.ensemble import IsolationForest

    from streamml.models import OnnxModel

    per_key: dict[str, list[dict]] = {}
    for e in data.events:
        per_key.setdefault(e["sensor"], []).append(e)
    feats = {k: _features(np.array([e["value"] for e in evs])) for k, evs in per_key.items()}
    day = int(timedelta(days=1) / data.step)
    train = np.concatenate([f[360:day] for f in feats.values()])
    forest = IsolationForest(n_estimators=100, random_state=0).fit(train)
    onx = to_onnx(forest, train[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    model = OnnxModel(onx.SerializeToString(), version="iforest", intra_op_threads=1)
    trained = -model.predict(train)["scores"].ravel()
    threshold = FixedThreshold(
        float(np.quantile(trained, 0.9999)), float(np.quantile(trained, 0.99))
    )
    items = [
        (k, {**e, "features": row}) for k, evs in per_key.items() for e, row in zip(evs, feats[k])
    ]
    items.sort(key=lambda kv: kv[1]["time"])
    return items, model, threshold


def _scored_by(model: Any) -> Callable[[Any], Any]:
    """Upstream of the windows: the model scores each event (one call per batch)."""
    from streamml.operators.infer import infer

    def pipeline(s: Any) -> Any:
        scored = infer(
            "isolation_forest",
            s,
            model,
            inputs="features",
            outputs=lambda e, out: {**e, "if_score": -float(out["scores"])},
            max_wait=timedelta(0),
        )
        return scored.oks

    return pipeline


def _detect(
    items: list[tuple[str, dict]],
    score_: Any,
    threshold: Any,
    upstream: Callable[[Any], Any] | None = None,
) -> tuple:
    flow = Dataflow("anomaly_quality")
    s = op.input("in", flow, TestingSource(items, batch_size=2000))
    if upstream is not None:
        s = upstream(s)
    out = anomaly_windows(
        "detect",
        s,
        timestamp=lambda e: e["time"],
        threshold=threshold,
        score=score_,
        **WINDOW_RULES,
    )
    windows: list = []
    opened: list = []
    op.output("windows", out.windows, TestingSink(windows))
    op.output("opened", out.opened, TestingSink(opened))
    run_main(flow)
    return [w for _, w in windows], [a for _, a in opened]


def _detectors(data: SensorSet) -> dict[str, tuple]:
    """Each detector: its input items, its score (a scorer or a field), its threshold, upstream."""
    items = [(e["sensor"], e) for e in data.events]
    if_items, model, if_threshold = _isolation_forest(data)
    return {
        "z-score (1 h window)": (items, ZScore("value", window=HOUR), FixedThreshold(4.5, 2.0)),
        "robust z-score (median/MAD, 1 h)": (
            items,
            RobustZScore("value", window=HOUR),
            FixedThreshold(5.0, 2.0),
        ),
        "EWMA (half-life 10 min)": (
            items,
            Ewma("value", half_life=10 * MINUTE),
            FixedThreshold(5.0, 2.0),
        ),
        "IsolationForest (skl2onnx, infer)": (
            if_items,
            "if_score",
            if_threshold,
            _scored_by(model),
        ),
        "z-score, adaptive q99.9 threshold": (
            items,
            ZScore("value", window=HOUR),
            QuantileThreshold(
                0.999, close_q=0.99, window=24 * HOUR, warmup=12 * HOUR, min_open=4.0
            ),
        ),
    }


def _prefixed(seed: int, windows: list[dict], opened: list[dict]) -> tuple[list, list]:
    """Keys and window ids made unique across sets, so sets can be scored together."""

    def tag(r: dict) -> dict:
        return {**r, "key": f"{seed}/{r['key']}", "window_id": f"{seed}/{r['window_id']}"}

    return [tag(w) for w in windows], [tag(a) for a in opened]


def quality(sets: list[SensorSet]) -> dict[str, dict]:
    """Score each detector on all ``sets`` together (their keys kept apart); prints a table."""
    truths = [
        TrueWindow(f"{i}/{t.key}", t.kind, t.start, t.end)
        for i, s in enumerate(sets)
        for t in s.truths
    ]
    found: dict[str, tuple[list, list]] = {}
    for i, data in enumerate(sets):
        start = time.perf_counter()
        for name, detector in _detectors(data).items():
            windows, opened = _prefixed(i, *_detect(*detector))
            found.setdefault(name, ([], []))
            found[name][0].extend(windows)
            found[name][1].extend(opened)
        print(
            f"  set {i + 1}/{len(sets)} detected in {time.perf_counter() - start:.0f} s", flush=True
        )

    kinds = ("spike", "level_shift", "variance_burst", "drift")
    print(
        f"  {'detector':<34} {'found':>6} {'prec':>6} {'recall':>7} {'delay':>9} {'ratio':>6}"
        "   by kind (spike/shift/burst/drift): recall; median delay in min"
    )
    results = {}
    for name, (windows, opened) in found.items():
        r = score_windows(windows, truths, opened)
        results[name] = r.as_dict()
        by_kind = "/".join(f"{r.recall_by_kind.get(k, 0):.2f}" for k in kinds)
        by_kind += "; " + "/".join(
            "-" if d is None else f"{d.total_seconds() / 60:.0f}"
            for d in (r.median_delay_by_kind.get(k) for k in kinds)
        )
        delay = "-" if r.median_delay is None else f"{r.median_delay.total_seconds() / 60:.1f} min"
        ratio = "-" if r.delay_ratio is None else f"{r.delay_ratio:.3f}"
        print(
            f"  {name:<34} {r.found:>6} {r.precision:>6.2f} {r.recall:>7.2f} {delay:>9} {ratio:>6}"
            f"   {by_kind}",
            flush=True,
        )
    mean_len = score_windows([], truths).mean_length
    print(f"  ({len(truths)} true windows, mean length {mean_len.total_seconds() / 60:.0f} min)")
    return results


# --------------------------------------------------------------- throughput


class _PassThrough(op.StatefulBatchLogic):
    def on_batch(self, values: list) -> tuple[list, bool]:
        return values, False

    def snapshot(self) -> None:
        return None


def _fleet(n: int, keys: int, seed: int = 0) -> list[tuple[str, dict]]:
    """``n`` readings over ``keys`` sensors, one per second each, with rare spikes."""
    rng = random.Random(seed)
    t0 = datetime(2026, 1, 5, tzinfo=timezone.utc)
    out = []
    for i in range(n):
        x = rng.gauss(10.0, 1.0) + (9.0 if rng.random() < 0.001 else 0.0)
        out.append(
            (f"sensor-{i % keys:04d}", {"time": t0 + timedelta(seconds=i // keys), "value": x})
        )
    return out


def _frames(items: list[tuple[str, dict]], size: int = 5000) -> list[pl.DataFrame]:
    """The keyed events as frames of ``size`` rows: the key in a ``sensor`` column."""
    out = []
    for i in range(0, len(items), size):
        part = items[i : i + size]
        columns: dict[str, list] = {"sensor": [k for k, _ in part]}
        for name in part[0][1]:
            columns[name] = [e[name] for _, e in part]
        out.append(pl.DataFrame(columns))
    return out


def throughput(n: int, keys: int, rounds: int, warmup: bool = True) -> dict[str, Any]:
    items = _fleet(n, keys)
    model_items = [(k, {**e, "score": abs(e["value"] - 10.0)}) for k, e in items]
    frames, model_frames = _frames(items), _frames(model_items)
    threshold = FixedThreshold(4.0, 2.0)
    rules = dict(cooldown=30 * timedelta(seconds=1), gap=5 * MINUTE, max_duration=HOUR, alerts=True)
    ts = lambda e: e["time"]  # noqa: E731

    def flow_of(build: Any, data: list) -> Any:
        framed = isinstance(data[0], pl.DataFrame)
        events = sum(f.height for f in data) if framed else len(data)

        def run() -> int:
            flow = Dataflow("anomaly_speed")
            s = op.input("in", flow, TestingSource(data, batch_size=1 if framed else 5000))
            sink = CountSink()
            for stream in build(s):
                op.output(f"out{id(stream)}", stream, sink)
            run_main(flow)
            return events

        return run

    def on(framed: bool) -> dict[str, Any]:
        return dict(key="sensor", timestamp="time") if framed else dict(timestamp=ts)

    def fused(scorer: Any, framed: bool = False) -> Any:
        def build(s: Any) -> list:
            out = anomaly_windows("aw", s, threshold=threshold, score=scorer, **on(framed), **rules)
            return [out.windows, out.opened]

        return build

    def two_step(framed: bool = False) -> Any:
        def build(s: Any) -> list:
            zscore = ZScore("value", window=5 * MINUTE)
            scored = score("score", s, scorer=zscore, **on(framed))
            out = anomaly_windows("aw", scored.oks, threshold=threshold, **on(framed), **rules)
            return [out.windows, out.opened]

        return build

    contenders = {
        "z-score + windows (one step)": flow_of(fused(ZScore("value", window=5 * MINUTE)), items),
        "EWMA + windows (one step)": flow_of(fused(Ewma("value", half_life=2 * MINUTE)), items),
        "robust z-score + windows (one step)": flow_of(
            fused(RobustZScore("value", window=5 * MINUTE)), items
        ),
        "model score field -> windows": flow_of(fused("score"), model_items),
        "score -> anomaly_windows (two steps)": flow_of(two_step(), items),
        "frames: z-score + windows (one step)": flow_of(
            fused(ZScore("value", window=5 * MINUTE), framed=True), frames
        ),
        "frames: robust z-score + windows (one step)": flow_of(
            fused(RobustZScore("value", window=5 * MINUTE), framed=True), frames
        ),
        "frames: model score field -> windows": flow_of(fused("score", framed=True), model_frames),
        "frames: z-score, exclude_above=4 + windows": flow_of(
            fused(ZScore("value", window=5 * MINUTE, exclude_above=4.0), framed=True), frames
        ),
        "frames: robust, exclude_above=4 + windows": flow_of(
            fused(RobustZScore("value", window=5 * MINUTE, exclude_above=4.0), framed=True),
            frames,
        ),
        "frames: 2-of-3 vote (z, robust, EWMA) + windows": flow_of(
            fused(
                Combined(
                    [
                        ZScore("value", window=5 * MINUTE),
                        RobustZScore("value", window=5 * MINUTE),
                        Ewma("value", half_life=2 * MINUTE),
                    ],
                    how="vote",
                ),
                framed=True,
            ),
            frames,
        ),
        "inactivity (after 5 min)": flow_of(
            lambda s: [inactivity("quiet", s, timestamp=ts, after=5 * MINUTE).alerts], items
        ),
        "frames: inactivity (after 5 min)": flow_of(
            lambda s: [
                inactivity("quiet", s, key="sensor", timestamp="time", after=5 * MINUTE).alerts
            ],
            frames,
        ),
        "frames: score -> anomaly_windows (two steps)": flow_of(two_step(framed=True), frames),
        "ceiling: pass-through stateful_batch": flow_of(
            lambda s: [op.stateful_batch("pass", s, lambda _: _PassThrough())], items
        ),
    }
    measurements = alternate(contenders, rounds=rounds, warmup=warmup)
    print(
        format_table(
            f"Throughput, one worker, {keys:,} keys, {n:,} events (in-memory source)",
            measurements,
            unit="events/s",
        ),
        flush=True,
    )
    # The machine is shared: CPU time is less disturbed by other processes than wall time.
    per_cpu = {}
    for name, run in contenders.items():
        start = time.process_time()
        items_done = run()
        per_cpu[name] = items_done / (time.process_time() - start)
    print("  events per CPU-second (one run each, less sensitive to machine load):")
    for name, rate in per_cpu.items():
        print(f"    {name:<40} {rate:>12,.0f}")
    print(f"  load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    return {
        "wall": {m.name: m.as_dict() for m in measurements},
        "per_cpu_second": per_cpu,
        "load_average": os.getloadavg()[0],
    }


def main(quick: bool = False) -> dict:
    seeds = (0,) if quick else (0, 1, 2)
    sets = [sensor_set(keys=8, days=7, seed=seed) for seed in seeds]
    events = sum(len(s.events) for s in sets)
    print(
        f"Detection quality on the generated sensor set: seeds {seeds}, 8 keys x 7 days each,"
        f" {events:,} events",
        flush=True,
    )
    results: dict[str, Any] = {"quality": quality(sets)}
    n = 50_000 if quick else 400_000
    results["throughput"] = throughput(n, keys=1000, rounds=3, warmup=not quick)
    return results


if __name__ == "__main__":
    import sys

    main(quick="--quick" in sys.argv)
