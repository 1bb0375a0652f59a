"""Soak: millions of events over hundreds of thousands of keys with churn; RSS must level off.

    python -m benchmarks.soak            # 10,000,000 events over 200,000 keys
    python -m benchmarks.soak --quick    # 300,000 events over 6,000 keys (about 15 s)

The pipeline has every stateful operator family, as in production: a
stream–table join (``enrich``, a table row for half of the keys), rolling
30-second features per key (TTL 2 minutes), a gradient-boosted anomaly model
(ONNX, dynamic batches) and anomaly windows (cooldown 5 s, gap 20 s). Events come from an in-process generator
(a Kafka broker would keep all 10 million messages in its memory and measure
itself) and results are counted, not kept.

Churn: at any time a population of ``active`` keys sends readings, each
about once a second of event time (1 Hz sensors); the population slides over
the key space so every key is used for about a minute and then never again.
Keyed state must be evicted (rolling windows by TTL, anomaly state when
windows close), so RSS rises while the first keys accumulate and then stays
flat. The benchmark prints RSS every few seconds and the growth over the
second half of the run.

Why event time here runs near real time: a key that goes quiet while its
anomaly window is open keeps that window until its watermark passes the
window's deadline, and a quiet key's watermark advances with the *system*
clock (as Bytewax's ``EventClock`` does). Replaying hours of event time in
minutes would keep every such key's state for the deadline's length in wall
time (with a 30-minute gap, RSS grows through a 10-minute replay: measured
+19 MB per 1.2M events). With 1 Hz sensors and second-scale deadlines, the
soak measures what a live deployment sees.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource, run_main
from streamml.operators import anomaly, featurize, infer, join

from streamml.models import OnnxModel

__all__ = ["main", "soak"]

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
FIELDS = ("temperature", "vibration")
BATCH = 2000


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _model_bytes() -> bytes:
    """A small gradient-boosted regressor of "how anomalous" from |z| scores, as ONNX."""
    from skl2onnx import to_onnx
    from sklearn.ensemble import GradientBoostingRegressor

    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(0, 2.5, size=(4000, 2))).astype(np.float32)
    y = np.sqrt((x**2).sum(axis=1))
    model = GradientBoostingRegressor(n_estimators=30, max_depth=3, random_state=0).fit(x, y)
    return to_onnx(model, x[:1]).SerializeToString()


class _Progress:
    """Events generated so far; shared by the generator and the sampler thread."""

    def __init__(self) -> None:
        self.events = 0


class _Churn(StatelessSourcePartition[tuple[str, dict[str, Any]]]):
    """Readings of a sliding population of keys, one a minute per key in event time."""

    def __init__(self, n: int, keys: int, active: int, progress: _Progress) -> None:
        self._n, self._keys, self._active = n, keys, active
        self._progress = progress
        self._rng = np.random.default_rng(5)
        self._i = 0
        self._step_us = 1_000_000 / active  # event time per event: each key about once a second

    def next_batch(self) -> list[tuple[str, dict[str, Any]]]:
        if self._i >= self._n:
            raise StopIteration
        i0, i1 = self._i, min(self._i + BATCH, self._n)
        idx = np.arange(i0, i1)
        low = idx * (self._keys - self._active) // self._n  # the population slides over the keys
        ids = low + self._rng.integers(0, self._active, size=len(idx))
        temps = 20 + (ids % 7) + self._rng.normal(0, 0.5, len(idx))
        temps[self._rng.random(len(idx)) < 0.001] += 10  # rare spikes open anomaly windows
        vibs = 1 + self._rng.normal(0, 0.1, len(idx))
        us = (idx * self._step_us).astype(np.int64)
        batch = [
            (
                key := f"k{k}",
                {
                    "sensor_id": key,
                    "ts": T0 + timedelta(microseconds=int(u)),
                    "temperature": float(t),
                    "vibration": float(v),
                },
            )
            for k, u, t, v in zip(ids.tolist(), us.tolist(), temps.tolist(), vibs.tolist())
        ]
        self._i = i1
        self._progress.events = i1
        return batch


class _ChurnSource(DynamicSource[tuple[str, dict[str, Any]]]):
    def __init__(self, n: int, keys: int, active: int, progress: _Progress) -> None:
        self._args = (n, keys, active, progress)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Churn:
        return _Churn(*self._args)


class _Count(StatelessSinkPartition[Any]):
    def __init__(self, counts: dict[str, int], name: str) -> None:
        self._counts, self._name = counts, name

    def write_batch(self, items: list[Any]) -> None:
        self._counts[self._name] += len(items)


class _CountSink(DynamicSink[Any]):
    def __init__(self, counts: dict[str, int], name: str) -> None:
        self._counts, self._name = counts, name
        counts[name] = 0

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Count:
        return _Count(self._counts, self._name)


class _Kinds(StatelessSinkPartition[str]):
    def __init__(self, counts: dict[str, int]) -> None:
        self._counts = counts

    def write_batch(self, items: list[str]) -> None:
        for kind in items:
            self._counts[kind] = self._counts.get(kind, 0) + 1


class _KindSink(DynamicSink[str]):
    """Counts rejections by step and error type."""

    def __init__(self, counts: dict[str, int]) -> None:
        self._counts = counts

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Kinds:
        return _Kinds(self._counts)


def _vectorize(batch: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    if not batch:
        return batch
    x = np.array([[e[f] for f in FIELDS] for _, e in batch])
    mean = np.array([[e[f"{f}_mean_30s"] for f in FIELDS] for _, e in batch])
    std = np.array([[e[f"{f}_std_30s"] for f in FIELDS] for _, e in batch])
    vectors = np.abs((x - mean) / np.maximum(std, 0.05)).astype(np.float32)
    return [(k, {**e, "features": v}) for (k, e), v in zip(batch, vectors)]


def _attach_score(event: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
    return {**event, "score": float(outputs["variable"])}


def _flow(n: int, keys: int, active: int, progress: _Progress, counts: dict[str, int]) -> Dataflow:
    flow = Dataflow("soak")
    readings = op.input("readings", flow, _ChurnSource(n, keys, active, progress))
    rows = [(f"k{k}", {"site": f"hall-{k % 9}"}) for k in range(0, keys, 2)]
    table = op.input(
        "sites", flow, TestingSource([*rows, join.TableReady("sites", 0, 1)], batch_size=10_000)
    )
    placed = join.enrich("site", readings, table, default={"site": "unknown"})
    feats = featurize.rolling(
        "features",
        placed.oks,
        timestamp=lambda e: e["ts"],
        window=timedelta(seconds=30),
        fields=list(FIELDS),
        aggregates=["mean", "std"],
        ttl=timedelta(minutes=2),
        label="30s",
    )
    scored = infer.infer(
        "model",
        op.flat_map_batch("vectorize", feats.oks, _vectorize),
        OnnxModel(_model_bytes(), version="soak", intra_op_threads=1),
        inputs="features",
        outputs=_attach_score,
        max_batch=2048,
        max_wait=timedelta(milliseconds=50),
    )
    found = anomaly.anomaly_windows(
        "windows",
        scored.oks,
        timestamp=lambda e: e["ts"],
        score="score",
        threshold=anomaly.FixedThreshold(2.5, close_below=1.5),
        min_points=1,
        cooldown=timedelta(seconds=5),
        gap=timedelta(seconds=20),
        max_duration=timedelta(minutes=10),
    )
    op.output("count_scores", scored.oks, _CountSink(counts, "scores"))
    op.output("count_windows", found.windows, _CountSink(counts, "windows"))
    rejected = op.merge(
        "rejected", placed.errs, feats.errs, feats.late, scored.errs, found.errs, found.late
    )
    kinds = op.map("rejection_kind", rejected, lambda r: f"rejected {r.step_id} {r.error_type}")
    op.output("count_rejected", kinds, _KindSink(counts))
    return flow


def soak(n: int, keys: int, active: int, *, every_s: float) -> dict[str, Any]:
    """Run ``n`` events over ``keys`` keys (``active`` at a time); sample RSS every ``every_s``."""
    progress, counts = _Progress(), {}
    gc.collect()
    base = _rss_mb()
    flow = _flow(n, keys, active, progress, counts)
    samples: list[tuple[float, int, float]] = []
    done = threading.Event()
    started = time.monotonic()

    def sample() -> None:
        last_t, last_n = started, 0
        while not done.wait(every_s):
            now, events, rss = time.monotonic(), progress.events, _rss_mb()
            samples.append((round(now - started, 1), events, round(rss, 1)))
            rate = (events - last_n) / (now - last_t)
            last_t, last_n = now, events
            print(
                f"  {now - started:7.1f} s  {events:>12,} events  {rate:>9,.0f} ev/s"
                f"  RSS {rss:8,.1f} MB",
                flush=True,
            )

    sampler = threading.Thread(target=sample, daemon=True)
    print(f"soak: {n:,} events over {keys:,} keys ({active:,} active at a time)", flush=True)
    sampler.start()
    try:
        run_main(flow)
    finally:
        done.set()
        sampler.join()
    seconds = time.monotonic() - started
    half = [rss for _, events, rss in samples if events >= n // 2]
    quarter = [rss for _, events, rss in samples if events >= n // 4]
    result = {
        "events": n,
        "keys": keys,
        "active_keys": active,
        "seconds": round(seconds, 1),
        "events_per_s": round(n / seconds),
        "rss_base_mb": round(base, 1),
        "rss_peak_mb": max(rss for _, _, rss in samples) if samples else None,
        "rss_growth_second_half_mb": round(half[-1] - half[0], 1) if len(half) > 1 else None,
        "rss_growth_last_three_quarters_mb": (
            round(quarter[-1] - quarter[0], 1) if len(quarter) > 1 else None
        ),
        "outputs": dict(counts),
        "samples": samples,
    }
    print(
        f"soak: {n:,} events in {seconds:,.0f} s ({n / seconds:,.0f} ev/s); RSS {base:,.0f} MB"
        f" before, peak {result['rss_peak_mb']:,} MB; growth over the second half"
        f" {result['rss_growth_second_half_mb']} MB; outputs {counts}",
        flush=True,
    )
    return result


def main(quick: bool = False) -> dict:
    """Run the soak, print RSS over time, return the samples and the growth figures."""
    if quick:
        return soak(300_000, 6_000, 1_500, every_s=2.0)
    return soak(10_000_000, 200_000, 10_000, every_s=10.0)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
