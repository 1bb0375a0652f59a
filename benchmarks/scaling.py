"""Scaling and memory of the light pipeline.

- **Scaling**: the light pipeline of :mod:`benchmarks.pipeline` over a
  4-partition topic as 1 process × 1 worker, 1 process × 2 workers
  (``-w 2``) and 2 processes × 1 worker (Bytewax cluster mode, ``-i``/``-a``),
  each started with ``python -m bytewax.run`` and timed from start to exit
  (process start-up included). Efficiency = rate / (workers × 1-worker rate).
  The machine has two cores and the broker runs on them too.
- **Memory**: peak RSS of a process running the featurize → infer part of the
  pipeline over an in-memory source, for 10³, 10⁴ and 10⁵ sensors (the same
  number of events each), next to the same process with no events (the
  baseline: interpreter, libraries, model).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.pipeline import _readings, build_mlp
from streamml.broker import EmbeddedBroker
from streamml.testing import consume_all, produce_all

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _run_layout(bootstrap: str, broker, model_path: str, n: int, layout: str) -> float:
    out = f"scale-out-{layout}-{time.monotonic_ns()}"
    broker.create_topic(out, partitions=4)
    spec = f"benchmarks.pipeline:streamml_flow({bootstrap!r}, 'scale-in', {out!r}, {model_path!r}, shards=4)"
    base = [sys.executable, "-m", "bytewax.run", spec]
    if layout == "1x1":
        commands = [base]
    elif layout == "1x2":
        commands = [[*base, "-w", "2"]]
    else:
        addresses = ";".join(f"127.0.0.1:{p}" for p in _free_ports(2))
        commands = [[*base, "-i", str(i), "-a", addresses] for i in range(2)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(c, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for c in commands
    ]
    for p in procs:
        _, err = p.communicate(timeout=900)
        if p.returncode != 0:
            raise RuntimeError(f"{layout} failed: {err.decode()[-2000:]}")
    elapsed = time.perf_counter() - start
    got = len(consume_all(bootstrap, out))
    if got != n:
        raise RuntimeError(f"{layout}: {got} results for {n} readings")
    return n / elapsed


_MEMORY_SCRIPT = """
import sys
import numpy as np
import polars as pl
import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from benchmarks.pipeline import FEATURES
from streamml.models import OnnxModel
from streamml.operators import featurize
from streamml.operators.infer import infer
from benchmarks.harness import CountSink
keys, n, model_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
t0, size = 1_767_225_600_000, 2000
names = np.array([f"s{i}" for i in range(keys)])
def frames():  # generated as consumed: only state grows
    for start in range(0, n, size):
        i = np.arange(start, min(start + size, n))
        yield pl.DataFrame({"sensor_id": names[i % keys], "ts": t0 + (i // keys) * 1000,
                            "temperature": 60.0 + i % 7, "vibration": np.full(len(i), 2.0),
                            "pressure": np.full(len(i), 5.0)})
flow = Dataflow("memory")
src = op.input("in", flow, TestingSource(frames()))
feats = featurize.rolling("last10", src, key="sensor_id", timestamp="ts", last=10,
                          fields=["temperature"], aggregates=["mean"], shards=1)
scored = infer("mlp", feats.oks, OnnxModel(model_path, intra_op_threads=1), inputs=FEATURES,
               outputs={"p_hot": ("probabilities", 1)}, version_field=None, max_batch=1024)
sink = CountSink()
op.output("out", scored.oks, sink)
def hwm_kb():  # this process's own high-water mark (ru_maxrss would include the parent's, from fork)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
before = hwm_kb()  # imports, model: the baseline
run_main(flow)
print(hwm_kb(), before, sink.counter[0])
"""


def _peak_rss_mb(keys: int, n: int, model_path: str) -> tuple[float, float]:
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(keys), str(n), model_path],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    peak_kb, before_kb, count = map(int, proc.stdout.split()[-3:])
    if count != n:
        raise RuntimeError(f"memory run scored {count} of {n}")
    return peak_kb / 1024, before_kb / 1024


def main(quick: bool = False) -> dict:
    n = 60_000 if quick else 200_000
    scaling = []
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        model_path = str(Path(tmp) / "mlp.onnx")
        Path(model_path).write_bytes(build_mlp())
        broker.create_topic("scale-in", partitions=4)
        produce_all(broker.bootstrap, "scale-in", _readings(n))
        print(
            f"{n:,} readings on a 4-partition topic; each layout started with python -m bytewax.run",
            flush=True,
        )
        for layout, workers in (("1x1", 1), ("1x2", 2), ("2x1", 2)):
            rate = _run_layout(broker.bootstrap, broker, model_path, n, layout)
            scaling.append({"layout": layout, "workers": workers, "events_per_s": rate})
            print(
                f"  {layout} ({workers} worker{'s' * (workers > 1)}): {rate:,.0f} ev/s", flush=True
            )
        for row in scaling:
            row["efficiency"] = row["events_per_s"] / (row["workers"] * scaling[0]["events_per_s"])

        memory = []
        events = 100_000 if quick else 300_000
        print(f"peak RSS, featurize → infer over {events:,} in-memory events", flush=True)
        for keys in (1_000, 10_000, 100_000):
            peak, before = _peak_rss_mb(keys, events, model_path)
            memory.append(
                {
                    "keys": keys,
                    "events": events,
                    "peak_rss_mb": peak,
                    "before_run_mb": before,
                    "growth_mb": peak - before,
                }
            )
            print(
                f"  {keys:>7,} keys: peak {peak:,.0f} MB ({peak - before:+,.0f} MB during the run)",
                flush=True,
            )
    return {"scaling": scaling, "memory": memory}


if __name__ == "__main__":
    print(json.dumps(main(quick="--quick" in sys.argv), indent=1))
