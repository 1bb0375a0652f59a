"""What streamml.metrics costs: ``infer`` with its counting steps next to the same operator without.

One Bytewax worker, an in-memory source, a cheap NumPy model (so the
counting is as large a share of the work as it can be), 200,000 events:

- frames of 100 rows (small frames: many Bytewax batches, the worst case
  for a cost paid per batch) and of 1,000 rows;
- ``(key, event)`` rows (counting a batch of rows looks at each item's type,
  in C).

The uninstrumented contender is the same builder function made an operator
without :func:`streamml.metrics.instrumented` (``infer.__wrapped__``
twice), so the only difference is the counting steps.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Dataflow, operator
from bytewax.testing import TestingSink, TestingSource, run_main
from streamml.operators.infer import infer

from benchmarks.harness import alternate, format_table
from streamml.models import CallableModel

_plain_infer = operator(infer.__wrapped__.__wrapped__)
"""``infer`` without its counting steps."""

_MODEL = CallableModel(lambda x: x.sum(axis=1), outputs="y", version="bench")


def _run(build: Callable[..., Any], items: list[Any], inputs: Any, n: int) -> Callable[[], int]:
    def run() -> int:
        flow = Dataflow("metrics_bench")
        out = build(
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
    n = 40_000 if quick else 200_000
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
                "infer without counting": _run(_plain_infer, items, inputs, n),
                "infer (counted)": _run(infer, items, inputs, n),
            },
            rounds=rounds,
        )
        print(format_table(f"infer, {name}, {n:,} events, events/s", runs, "events/s"))
        ratio = runs[1].median / runs[0].median
        print(f"  counted / uncounted = {ratio:.3f}", flush=True)
        results[name] = {"runs": [r.as_dict() for r in runs], "ratio": ratio}
    return results


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
