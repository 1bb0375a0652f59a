"""What streamml.metrics costs: ``infer`` with its counting steps next to the same operator without.

One Bytewax worker, an in-memory source, a cheap NumPy model (so the
counting is as large a share of the work as it can be), 200,000 events:

- frames of 100 rows (small frames: many Bytewax batches, the worst case
  for a cost paid per batch) and of 1,000 rows;
- ``(key, event)`` rows (counting a batch of rows looks at each item's type,
  in C);
- the end-to-end light pipeline of :mod:`benchmarks.pipeline` (Kafka source
  → ``featurize.rolling`` → ``infer`` → Kafka sink on the embedded broker),
  its flow built with and without counting, alternately in one process.

The uncounted contender is the same flow built with ``STREAMML_METRICS=0``
(:func:`streamml.metrics.counting`): no counting steps, and sinks not
wrapped to count what they deliver, so the only difference is the counting.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from streamml.operators.infer import infer

from benchmarks import pipeline
from benchmarks.harness import alternate, format_table
from streamml.broker import EmbeddedBroker
from streamml.models import CallableModel
from streamml.testing import produce_all


def _pipeline(n: int, rounds: int) -> dict[str, Any]:
    model = pipeline.build_mlp()
    with EmbeddedBroker() as broker:
        broker.create_topic("readings", partitions=pipeline.PARTITIONS)
        produce_all(broker.bootstrap, "readings", pipeline._readings(n))
        outs = iter(range(10**6))

        def run(counted: bool) -> int:
            out = f"results-{next(outs)}"
            broker.create_topic(out)
            if counted:
                flow = pipeline.streamml_flow(broker.bootstrap, "readings", out, model)
            else:
                with pipeline.uncounted():
                    flow = pipeline.streamml_flow(broker.bootstrap, "readings", out, model)
            run_main(flow)
            return n

        runs = alternate(
            {
                "pipeline without counting": lambda: run(False),
                "pipeline (counted)": lambda: run(True),
            },
            rounds=rounds,
            warmup=False,
        )
    print(format_table(f"light pipeline end to end, {n:,} events, events/s", runs, "ev/s"))
    ratio = runs[1].median / runs[0].median
    print(f"  counted / uncounted = {ratio:.3f}", flush=True)
    return {"runs": [r.as_dict() for r in runs], "ratio": ratio}


_MODEL = CallableModel(lambda x: x.sum(axis=1), outputs="y", version="bench")


def _run(counted: bool, items: list[Any], inputs: Any, n: int) -> Callable[[], int]:
    def run() -> int:
        flow = Dataflow("metrics_bench")
        with pipeline.uncounted() if not counted else nullcontext():
            out = infer(
                "score",
                op.input("in", flow, TestingSource(items)),
                _MODEL,
                inputs=inputs,
                overlap=False,
            )
        got: list[Any] = []
        op.output("oks", out.oks, TestingSink(got))
        op.output("errs", out.errs, TestingSink([]))
        run_main(flow)
        rows = sum(x.height if isinstance(x, pl.DataFrame) else 1 for x in got)
        assert rows == n, f"{rows} rows out of {n}"
        return n

    return run


def main(quick: bool = False) -> dict:
    """Run every workload with and without counting; ratios counted / uncounted."""
    n = 100_000 if quick else 200_000
    rounds = 3 if quick else 5
    rng = np.random.default_rng(7)
    x = rng.normal(size=(n, 4))
    frame = pl.DataFrame({f"f{i}": x[:, i] for i in range(4)})
    workloads = {
        "frames of 100 rows": (
            [frame.slice(i, 100) for i in range(0, n, 100)],
            list(frame.columns),
        ),
        "frames of 1,000 rows": (
            [frame.slice(i, 1000) for i in range(0, n, 1000)],
            list(frame.columns),
        ),
        "(key, event) rows": (
            [(str(i % 100), {"v": x[i].astype(np.float32)}) for i in range(n)],
            "v",
        ),
    }
    results: dict[str, Any] = {"events": n}
    for name, (items, inputs) in workloads.items():
        runs = alternate(
            {
                "infer without counting": _run(False, items, inputs, n),
                "infer (counted)": _run(True, items, inputs, n),
            },
            rounds=rounds,
        )
        print(format_table(f"infer, {name}, {n:,} events, events/s", runs, "events/s"))
        ratio = runs[1].median / runs[0].median
        print(f"  counted / uncounted = {ratio:.3f}", flush=True)
        results[name] = {"runs": [r.as_dict() for r in runs], "ratio": ratio}
    results["light pipeline"] = _pipeline(n, rounds)
    return results


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
