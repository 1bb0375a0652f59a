"""Batched inference: the ``infer`` operator next to calling the model per event and the raw runtime.

One Bytewax worker, an in-memory source of keyed events with 16 float32
features, ONNX Runtime with one intra-op thread, models built here with
scikit-learn and skl2onnx from generated data:

- MLP 16→64→64→2: ``infer`` on ``polars.DataFrame`` batches (the unit
  between streamml steps; 16 float32 feature columns, frames of 1,024 rows,
  and of 5,000 rows sliced into batches of 1,024), ``infer`` on
  ``(key, event)`` rows (dynamic batches of up to 1,024), the same row
  dataflow calling the model once per event (``max_batch=1``), and the raw
  ``InferenceSession.run`` over pre-stacked batches of 1,024 (the ceiling).
- IsolationForest, 100 trees: ``infer`` vs the raw runtime at the same batch
  size.
- Ceilings: each model alone in ONNX Runtime at batch 1, 64 and 1,024.
- Adaptive batch size: a model costing 1 ms a call plus 20 µs a row, then
  60 µs a row from the middle of the stream (a sleep, so it holds no core),
  under fixed ``max_batch`` 1,024 and 64 and under ``target_latency`` 10 ms:
  events/s and the model's latency per call (median, p90, max).
- Model copies, raw: the MLP's rows/s in batches of 1,024 called from one
  thread on one copy, from two threads on two copies (one ORT thread
  each), and from two threads sharing one copy — whether holding more
  copies per process uses the second core here.
- Model copies through ``infer``: ``copies=1`` vs ``copies=2`` on a model
  heavy enough that it dominates (an MLP 64→512→512→2 built here with
  ``onnx.helper``, one ORT thread, batches of 256 rows from frames of 256),
  alternating rounds; wall rows/s and rows per CPU-second, medians and the
  ratio. Beside it, a model that waits 2 ms a call (a sleep, as a remote
  call would) with ``copies`` 1, 2 and 4: calls that wait overlap on any
  machine. Measured on this 2-core machine shared with other work
  (``python -m benchmarks.infer --copies``, load 4-11): the MLP's copies=2
  / copies=1 0.88-1.01x wall and 0.94-1.02x per CPU-second over six runs,
  the process keeping 0.32-0.56 cores busy either way (no core was spare);
  the waiting model 1.95-2.38x, and 3.72-4.57x with 4 copies. When copies
  help: ``docs/models.md`` ("Model copies").
- Latency: ``max_wait`` = 10 ms, a source paced at half the MLP's measured
  ``infer`` rate; the time from the source handing an event to Bytewax to
  the sink receiving it (so an upper bound on the time spent in the
  operator), p50 / p99 / max.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main
from streamml.operators.infer import infer

from benchmarks.harness import alternate, format_table
from streamml.models import CallableModel, OnnxModel

N_FEATURES = 16
N_KEYS = 100
SOURCE_BATCH = 1024
MAX_BATCH = 1024
WIDE_FEATURES = 64


# -- models -------------------------------------------------------------------------


def _training_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(42)
    x = rng.normal(size=(5_000, N_FEATURES)).astype(np.float32)
    return x, (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] > 0).astype(np.int64)


def build_mlp() -> bytes:
    """MLP 16→64→64→2 as ONNX, probabilities as a plain tensor (no ZipMap)."""
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    x, y = _training_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier(hidden_layer_sizes=(64, 64), max_iter=30, random_state=0).fit(x, y)
    return to_onnx(mlp, x[:1], options={id(mlp): {"zipmap": False}}).SerializeToString()


def build_iforest() -> bytes:
    """IsolationForest with 100 trees as ONNX (outputs ``label`` and ``scores``)."""
    from skl2onnx import to_onnx
    from sklearn.ensemble import IsolationForest

    x, _ = _training_data()
    forest = IsolationForest(n_estimators=100, random_state=0).fit(x)
    return to_onnx(forest, x[:1], target_opset={"": 17, "ai.onnx.ml": 3}).SerializeToString()


def build_wide_mlp(seed: int = 0) -> bytes:
    """MLP 64→512→512→2 (ReLU) as ONNX, random weights: ~0.6 MFLOP a row, so the model dominates."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    sizes = [WIDE_FEATURES, 512, 512, 2]
    weights, nodes, x = [], [], "x"
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.normal(size=(n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = rng.normal(scale=0.1, size=n_out).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [
            helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
        ]
        x = f"a{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    nodes.append(helper.make_node("Identity", [x], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "wide_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, WIDE_FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 2])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


# -- an in-memory source and a counting sink, cheap per event ----------------------------


class _SlicePartition(StatelessSourcePartition):
    def __init__(
        self, items: list, limit: int, batch_size: int, stamp: bool, pace: float | None
    ) -> None:
        self._items = items
        self._end = min(limit, len(items))
        self._batch = batch_size
        self._i = 0
        self._stamp = stamp
        self._pace = pace  # events per second, or None: as fast as possible
        self._start = time.perf_counter()

    def next_batch(self) -> list:
        if self._i >= self._end:
            raise StopIteration
        if self._pace is None:
            end = self._i + self._batch
        else:  # everything due by now, at most one batch
            due = int((time.perf_counter() - self._start) * self._pace)
            end = min(due, self._i + self._batch)
        end = min(end, self._end)
        chunk = self._items[self._i : end]
        self._i = max(self._i, end)
        if self._stamp:  # the benchmark's own events: stamping them in place is cheap
            now = time.perf_counter()
            for _, e in chunk:
                e["t_in"] = now
        return chunk

    def next_awake(self) -> datetime | None:
        if self._pace is None or self._behind():
            return None  # poll again right away
        return datetime.now(timezone.utc) + timedelta(milliseconds=1)

    def _behind(self) -> bool:
        return int((time.perf_counter() - self._start) * self._pace) > self._i


class ListSource(DynamicSource):
    """Emits the first ``limit`` items of a list in slices from worker 0; optionally paced
    and time-stamped.

    Take a prefix with ``limit``, not by slicing the list: a big list that is
    not ``gc.freeze()``-d costs every full garbage collection tens of ms to
    traverse, a cost of the in-memory source that a Kafka source does not have.
    """

    def __init__(
        self,
        items: list,
        batch_size: int,
        *,
        limit: int | None = None,
        stamp: bool = False,
        pace: float | None = None,
    ) -> None:
        self._args = (items, len(items) if limit is None else limit, batch_size, stamp, pace)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SlicePartition:
        items, limit, batch_size, stamp, pace = self._args
        return _SlicePartition(items if worker_index == 0 else [], limit, batch_size, stamp, pace)


class _CountPartition(StatelessSinkPartition):
    def __init__(self, sink: CountSink) -> None:
        self._sink = sink

    def write_batch(self, items: list) -> None:
        self._sink.count += sum(len(x) if isinstance(x, pl.DataFrame) else 1 for x in items)
        if self._sink.latencies is not None:
            now = time.perf_counter()
            self._sink.latencies.extend(now - e["t_in"] for _, e in items)


class CountSink(DynamicSink):
    """Counts what arrives (a frame counts its rows); with ``latencies`` a list, records
    now − event["t_in"]."""

    def __init__(self, latencies: list[float] | None = None) -> None:
        self.count = 0
        self.latencies = latencies

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CountPartition:
        return _CountPartition(self)


# -- contenders ------------------------------------------------------------------------


def _events(n: int) -> list[tuple[str, dict[str, Any]]]:
    x = np.random.default_rng(7).normal(size=(n, N_FEATURES)).astype(np.float32)
    keys = [f"sensor-{i:03d}" for i in range(N_KEYS)]
    return [(keys[i % N_KEYS], {"id": i, "features": x[i]}) for i in range(n)]


def _frames(events: list, rows: int) -> list[pl.DataFrame]:
    """The same events as frames of ``rows`` rows: key, id and one column per feature."""
    matrix = np.stack([e["features"] for _, e in events])
    frame = pl.DataFrame(
        {
            "key": [k for k, _ in events],
            "id": np.arange(len(events)),
            **{f"f{j}": matrix[:, j] for j in range(N_FEATURES)},
        }
    )
    return [frame.slice(i, rows) for i in range(0, len(events), rows)]


def _frame_run(model: OnnxModel, frames: list, rows: int) -> Callable[[], int]:
    columns = [f"f{j}" for j in range(N_FEATURES)]

    def run() -> int:
        flow = Dataflow("bench_infer_frames")
        up = op.input("in", flow, ListSource(frames, 1))
        out = infer("infer", up, model, inputs=columns, max_batch=MAX_BATCH, max_wait=timedelta(0))
        sink = CountSink()
        op.output("out", out.oks, sink)
        run_main(flow)
        assert sink.count == rows, (sink.count, rows)
        return sink.count

    return run


def _dataflow_run(model: OnnxModel, events: list, max_batch: int, limit: int) -> Callable[[], int]:
    def run() -> int:
        flow = Dataflow("bench_infer")
        up = op.input("in", flow, ListSource(events, SOURCE_BATCH, limit=limit))
        out = infer("infer", up, model, max_batch=max_batch, max_wait=timedelta(0))
        sink = CountSink()
        op.output("out", out.oks, sink)
        run_main(flow)
        assert sink.count == limit, (sink.count, limit)
        return sink.count

    return run


def _raw_run(model: OnnxModel, matrix: np.ndarray, batch: int) -> Callable[[], int]:
    session = model.session
    name = session.get_inputs()[0].name

    def run() -> int:
        for i in range(0, len(matrix), batch):
            session.run(None, {name: matrix[i : i + batch]})
        return len(matrix)

    return run


def _ceilings(models: dict[str, OnnxModel], matrix: np.ndarray, quick: bool) -> dict[str, Any]:
    """Raw ONNX Runtime rows/s of each model at batch 1, 64 and 1,024 (one thread)."""
    rows = {1: 500 if quick else 3_000, 64: 20_000 if quick else 100_000}  # batch 1 is slow
    out: dict[str, Any] = {}
    for name, model in models.items():
        runs = alternate(
            {
                f"{name}, batch {b:,}": _raw_run(model, matrix[: rows.get(b, len(matrix))], b)
                for b in (1, 64, MAX_BATCH)
            },
            rounds=3,
            warmup=False,
        )
        print(format_table(f"{name}: raw ONNX Runtime rows/s by batch size", runs, "rows/s"))
        out[name] = [m.as_dict() for m in runs]
    return out


def _latency(model: OnnxModel, events: list, rate: float | None, limit: int) -> dict[str, float]:
    """Run the stamped dataflow, paced at ``rate`` (``None``: as fast as it goes)."""
    latencies: list[float] = []
    flow = Dataflow("bench_infer_latency")
    up = op.input("in", flow, ListSource(events, SOURCE_BATCH, limit=limit, stamp=True, pace=rate))
    out = infer("infer", up, model, max_batch=MAX_BATCH, max_wait=timedelta(milliseconds=10))
    sink = CountSink(latencies)
    op.output("out", out.oks, sink)
    start = time.perf_counter()
    run_main(flow)
    elapsed = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    return {
        "load_average_1min": os.getloadavg()[0],
        "rate_target": rate,
        "rate_achieved": len(latencies) / elapsed,
        "events": len(latencies),
        "p50_ms": q[49] * 1e3,
        "p99_ms": q[98] * 1e3,
        "max_ms": max(latencies) * 1e3,
        "mean_batch_size": out.stats.mean_batch_size,
        "max_wait_ms": out.stats.max_wait_seconds * 1e3,
    }


class _ChangingCost:
    """A model that sleeps 1 ms a call plus 20 µs a row, 60 µs a row after ``switch`` rows."""

    def __init__(self, switch: int) -> None:
        self.switch, self.rows, self.calls = switch, 0, []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        per_row = 20e-6 if self.rows < self.switch else 60e-6
        self.rows += len(x)
        time.sleep(1e-3 + per_row * len(x))
        self.calls.append(time.perf_counter() - started)
        return x[:, 0]


def _adaptive(quick: bool) -> dict[str, Any]:
    """Fixed batch sizes next to ``target_latency`` on a model whose cost per row changes."""
    n = 20_000 if quick else 60_000
    events = _events(n)
    calls: dict[str, list[float]] = {}

    def contender(name: str, **kwargs: Any) -> Callable[[], int]:
        def run() -> int:
            fn = _ChangingCost(n // 2)
            model = CallableModel(fn, outputs="score", shape=(N_FEATURES,), version="cost")
            flow = Dataflow("bench_infer_adaptive")
            up = op.input("in", flow, ListSource(events, SOURCE_BATCH))
            out = infer("infer", up, model, max_wait=timedelta(0), overlap=False, **kwargs)
            sink = CountSink()
            op.output("out", out.oks, sink)
            run_main(flow)
            calls.setdefault(name, []).extend(fn.calls)
            return sink.count

        return run

    runs = alternate(
        {
            "max_batch=1024": contender("max_batch=1024", max_batch=1024),
            "max_batch=64": contender("max_batch=64", max_batch=64),
            "target_latency=10ms (max_batch=1024)": contender(
                "target_latency=10ms (max_batch=1024)",
                max_batch=1024,
                target_latency=timedelta(milliseconds=10),
            ),
        },
        rounds=3,
        warmup=False,
    )
    print(format_table("cost per row x3 half-way: events/s", runs, "events/s"))
    out: dict[str, Any] = {"events": n, "runs": {m.name: m.as_dict() for m in runs}}
    for name, seconds in calls.items():
        q = statistics.quantiles(seconds, n=10)
        out[name] = {"p50_ms": q[4] * 1e3, "p90_ms": q[8] * 1e3, "max_ms": max(seconds) * 1e3}
        print(
            f"  {name}: model latency per call p50 {q[4] * 1e3:.1f} ms, p90 {q[8] * 1e3:.1f} ms, "
            f"max {max(seconds) * 1e3:.1f} ms ({len(seconds)} calls)"
        )
    return out


def _copies(model_bytes: bytes, matrix: np.ndarray, quick: bool) -> dict[str, Any]:
    """Rows/s of one model copy in one thread next to two copies (and one shared) in two threads."""
    copies = [
        OnnxModel(model_bytes, version=f"copy{i}", intra_op_threads=1, inter_op_threads=1)
        for i in range(2)
    ]
    batches = [matrix[i : i + MAX_BATCH] for i in range(0, len(matrix), MAX_BATCH)]
    batches = batches[: 100 if quick else 400]
    pool = ThreadPoolExecutor(2)

    def threads(models: list[OnnxModel]) -> Callable[[], int]:
        def run() -> int:
            list(pool.map(lambda i: models[i % 2].predict(batches[i]), range(len(batches))))
            return sum(len(b) for b in batches)

        return run

    def alone() -> int:
        for b in batches:
            copies[0].predict(b)
        return sum(len(b) for b in batches)

    runs = alternate(
        {
            "1 copy, 1 thread": alone,
            "2 copies, 2 threads": threads(copies),
            "1 copy shared by 2 threads": threads([copies[0], copies[0]]),
        },
        rounds=5,
    )
    pool.shutdown()
    print(format_table("MLP model copies, rows/s (batch 1,024, 1 ORT thread each)", runs, "rows/s"))
    print(f"  machine load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return {m.name: m.as_dict() for m in runs} | {"load_average_1min": os.getloadavg()[0]}


def _infer_copies(quick: bool) -> dict[str, Any]:
    """``infer`` with ``copies=1`` and ``copies=2`` of a model that dominates: wall and CPU rates."""
    n, rows = (8_192 if quick else 32_768), 256
    x = np.random.default_rng(5).normal(size=(n, WIDE_FEATURES)).astype(np.float32)
    frame = pl.DataFrame({"id": np.arange(n), **{f"f{j}": x[:, j] for j in range(WIDE_FEATURES)}})
    frames = [frame.slice(i, rows) for i in range(0, n, rows)]
    columns = [f"f{j}" for j in range(WIDE_FEATURES)]
    model = OnnxModel(build_wide_mlp(), version="wide", intra_op_threads=1, inter_op_threads=1)
    cpu: dict[str, list[tuple[float, float]]] = {}  # (CPU seconds, wall seconds) per run

    def contender(copies: int) -> Callable[[], int]:
        def run() -> int:
            flow = Dataflow("bench_infer_copies")
            up = op.input("in", flow, ListSource(frames, 1))
            out = infer("infer", up, model, inputs=columns, max_batch=rows, copies=copies)
            sink = CountSink()
            op.output("out", out.oks, sink)
            started, wall = time.process_time(), time.perf_counter()
            run_main(flow)
            spent = (time.process_time() - started, time.perf_counter() - wall)
            cpu.setdefault(f"copies={copies}", []).append(spent)
            assert sink.count == n, (sink.count, n)
            return n

        return run

    rounds = 3 if quick else 7
    runs = alternate({"copies=1": contender(1), "copies=2": contender(2)}, rounds=rounds)
    load = os.getloadavg()[0]
    print(
        format_table("MLP 64→512→512→2 through infer, rows/s (1 ORT thread a copy)", runs, "rows/s")
    )
    timed = {name: spent[-rounds:] for name, spent in cpu.items()}
    per_cpu = {name: n / statistics.median(c for c, _ in spent) for name, spent in timed.items()}
    # Cores the process kept busy: near 1 with copies=2 means no core was spare for the second copy.
    cores = {name: statistics.median(c / w for c, w in spent) for name, spent in timed.items()}
    one, two = runs[0].median, runs[1].median
    print(
        f"  copies=2 / copies=1: wall {two / one:.2f}x, per CPU-second "
        f"{per_cpu['copies=2'] / per_cpu['copies=1']:.2f}x ({per_cpu['copies=1']:,.0f} vs "
        f"{per_cpu['copies=2']:,.0f} rows/cpu-s); cores busy {cores['copies=1']:.2f} vs "
        f"{cores['copies=2']:.2f}; machine load {load:.1f} on {os.cpu_count()} cores"
    )
    return {
        "rows": n,
        "runs": {m.name: m.as_dict() for m in runs},
        "rows_per_cpu_second": per_cpu,
        "cores_busy": cores,
        "wall_ratio": two / one,
        "cpu_ratio": per_cpu["copies=2"] / per_cpu["copies=1"],
        "load_average_1min": load,
        "waiting_model": _waiting_copies(quick),
    }


def _waiting_copies(quick: bool) -> dict[str, Any]:
    """``copies`` 1, 2 and 4 of a model that waits 2 ms a call (a sleep, as a remote call would)."""
    n, rows = (16 * 64 if quick else 64 * 64), 16
    events = _events(n)
    model = CallableModel(
        lambda x: time.sleep(0.002) or x[:, 0], outputs="score", shape=(N_FEATURES,), version="io"
    )

    def contender(copies: int) -> Callable[[], int]:
        def run() -> int:
            flow = Dataflow("bench_infer_waiting")
            up = op.input("in", flow, ListSource(events, rows))
            out = infer("infer", up, model, max_batch=rows, max_wait=timedelta(0), copies=copies)
            sink = CountSink()
            op.output("out", out.oks, sink)
            run_main(flow)
            return sink.count

        return run

    runs = alternate({f"copies={c}": contender(c) for c in (1, 2, 4)}, rounds=3)
    print(format_table("a model waiting 2 ms a call, rows/s (batches of 16)", runs, "rows/s"))
    return {m.name: m.as_dict() for m in runs}


def main(quick: bool = False) -> dict:
    n = 100_000 if quick else 1_000_000
    n_single = n // 20  # calling the model per event is slow: fewer events, same per-event rate
    n_forest = n // 5
    rounds = 3
    print(f"building models and {n:,} events ...", flush=True)
    mlp = OnnxModel(build_mlp(), version="mlp", intra_op_threads=1, inter_op_threads=1)
    forest = OnnxModel(build_iforest(), version="iforest", intra_op_threads=1, inter_op_threads=1)
    events = _events(n)
    gc.collect()
    gc.freeze()  # the prebuilt input is not garbage: keep the collector from rescanning it
    matrix = np.stack([e["features"] for _, e in events])
    frames, big_frames = _frames(events, SOURCE_BATCH), _frames(events, 5_000)
    results: dict[str, Any] = {"events": n, "rounds": rounds}

    print("MLP 16→64→64→2 ...", flush=True)
    mlp_runs = alternate(
        {
            f"infer, rows, max_batch={MAX_BATCH}": _dataflow_run(mlp, events, MAX_BATCH, n),
            f"infer, frames of {SOURCE_BATCH:,} rows": _frame_run(mlp, frames, n),
            "infer, frames of 5,000 rows (sliced)": _frame_run(mlp, big_frames, n),
            "infer, model per event (max_batch=1)": _dataflow_run(mlp, events, 1, n_single),
            f"raw ONNX Runtime, batch {MAX_BATCH} (ceiling)": _raw_run(mlp, matrix, MAX_BATCH),
        },
        rounds=rounds,
    )
    print(format_table("MLP 16→64→64→2, events/s, 1 worker, 1 ORT thread", mlp_runs, "events/s"))
    batched, on_frames, single = mlp_runs[0].median, mlp_runs[1].median, mlp_runs[3].median
    print(f"  batched / per event = {batched / single:.1f}x (target >= 20x; >= 500,000 events/s)")
    print(f"  frames / rows = {on_frames / batched:.2f}x")
    results["mlp"] = {m.name: m.as_dict() for m in mlp_runs}
    results["mlp_speedup_vs_per_event"] = batched / single
    results["mlp_frames_vs_rows"] = on_frames / batched

    print("IsolationForest, 100 trees ...", flush=True)
    forest_runs = alternate(
        {
            f"infer, max_batch={MAX_BATCH}": _dataflow_run(forest, events, MAX_BATCH, n_forest),
            f"raw ONNX Runtime, batch {MAX_BATCH} (ceiling)": _raw_run(
                forest, matrix[:n_forest], MAX_BATCH
            ),
        },
        rounds=rounds,
    )
    print(format_table("IsolationForest (100 trees), events/s", forest_runs, "events/s"))
    share = forest_runs[0].median / forest_runs[1].median
    print(f"  infer / raw runtime = {share:.0%} (target >= 80%)")
    results["iforest"] = {m.name: m.as_dict() for m in forest_runs}
    results["iforest_share_of_raw"] = share
    results["ceilings"] = _ceilings({"MLP": mlp, "IsolationForest": forest}, matrix, quick)
    results["copies"] = _copies(build_mlp(), matrix, quick)
    print("model copies through infer ...", flush=True)
    results["infer_copies"] = _infer_copies(quick)
    print("adaptive batch size ...", flush=True)
    results["adaptive"] = _adaptive(quick)

    # The latency dataflow time-stamps events at the source and reads the clock at
    # the sink; its own maximum rate is measured first, then it is paced at half.
    full = _latency(mlp, events, None, n)
    rate = full["rate_achieved"] / 2
    seconds = 2 if quick else 4
    print(
        f"latency: max_wait 10 ms; unpaced the stamped dataflow runs {full['rate_achieved']:,.0f}"
        f" events/s; pacing at half, {rate:,.0f} events/s, for ~{seconds} s ..."
    )
    lat = _latency(mlp, events, rate, min(n, int(rate * seconds)))
    print(
        f"  source→sink through infer: p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, "
        f"max {lat['max_ms']:.1f} ms (target p99 <= 20 ms); achieved {lat['rate_achieved']:,.0f} "
        f"events/s, mean batch {lat['mean_batch_size']:.0f}; machine load {lat['load_average_1min']:.1f}"
        f" on {os.cpu_count()} cores"
    )
    results["latency"] = lat
    return results


if __name__ == "__main__":
    if "--copies" in sys.argv:  # only the copies contender
        _infer_copies(quick="--quick" in sys.argv)
    else:
        main(quick="--quick" in sys.argv)
