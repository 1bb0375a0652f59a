"""Training data: ``training_table``'s replay next to the same table built by hand in polars.

The job: a Parquet file of stored events (1,000 keys, one event every 10 ms,
one float field ``x``) and a Parquet file of labels (one event in ten gets a
label 500 ms after it) become a training table - each event with the mean
and the max of its key's ``x`` over the last 60 s, and the first label of
its key within 1 s after it. Each contender does the whole job, from reading
the files to the finished table, alternating rounds in one process:

- ``training_table`` replaying the file through ``rolling`` (the function
  the online flow would use) in a bounded Bytewax run, then its
  point-in-time label join; in frames of 1,000 rows, 5,000 and 50,000
  (the default since the first two were measured at 0.03x and 0.08x);
- what a user writes without streamml, knowing the whole file is there:
  polars (``read_parquet``, ``rolling_mean_by``/``rolling_max_by`` over
  each key, ``join_asof`` forward with a tolerance). pandas would do the
  same with ``groupby().rolling("60s")`` and ``merge_asof``, but it reads
  Parquet only through pyarrow, which streamml does not install, and it is
  the slower of the two: polars is the baseline to beat.

Both tables are checked to be the same first. The baselines see the
whole history at once and are vectorised over it; the replay computes each
row as the online flow does, one batch at a time, with lateness and
rejections - the price of features that cannot drift from the online ones.

    python -m benchmarks.training [--quick]
"""

from __future__ import annotations

import os
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from streamml.operators.featurize import rolling
from streamml.operators.training import training_table

from benchmarks.harness import alternate, format_table, per_cpu_second, with_cpu_rates

N_KEYS = 1_000
WINDOW = timedelta(seconds=60)
LABEL_DELAY = timedelta(seconds=1)
FEATURES = ("x_mean_60s", "x_max_60s")


def write_files(n: int, directory: Path) -> tuple[Path, Path]:
    """``n`` events and a label for one in ten of them, as Parquet files in ``directory``."""
    rng = np.random.default_rng(0)
    events = pl.DataFrame(
        {
            "id": pl.Series(rng.integers(0, N_KEYS, n)).cast(pl.String),
            "ms": np.arange(n, dtype=np.int64) * 10,
            "x": rng.normal(size=n),
        }
    )
    labels = events.sample(n // 10, seed=1).select(
        "id", (pl.col("ms") + 500).alias("ms"), y=pl.lit(1, pl.Int8)
    )
    paths = directory / "events.parquet", directory / "labels.parquet"
    events.write_parquet(paths[0])
    labels.write_parquet(paths[1])
    return paths


def _features(step_id: str, frames: Any) -> Any:
    return rolling(
        step_id,
        frames,
        key="id",
        timestamp="ms",
        window=WINDOW,
        fields=["x"],
        aggregates=["mean", "max"],
    )


def ours(events: Path, labels: Path, batch_size: int) -> pl.DataFrame:
    """The table by :func:`training_table`: replay, then the label join."""
    out = training_table(
        _features,
        events,
        labels,
        key="id",
        timestamp="ms",
        label="y",
        label_delay=LABEL_DELAY,
        batch_size=batch_size,
    )
    if out.rejected:
        raise AssertionError(f"the replay rejected {len(out.rejected)} rows: {out.rejected[0]}")
    return out.table


def by_polars(events: Path, labels: Path) -> pl.DataFrame:
    """The table in polars, from the whole file at once."""
    t = pl.from_epoch("ms", "ms")
    table = (
        pl.read_parquet(events)
        .with_columns(
            pl.col("x").rolling_mean_by(t, window_size="60s").over("id").alias(FEATURES[0]),
            pl.col("x").rolling_max_by(t, window_size="60s").over("id").alias(FEATURES[1]),
        )
        .sort("ms")
    )
    tolerance = LABEL_DELAY // timedelta(milliseconds=1)
    return table.join_asof(
        pl.read_parquet(labels).sort("ms"),
        on="ms",
        by="id",
        strategy="forward",
        tolerance=tolerance,
        check_sortedness=False,  # both sorted by time just above; polars cannot check by group
    )


def _check_same_tables(events: Path, labels: Path) -> None:
    """The replay and polars build the same table (so the comparison is fair)."""
    columns = ["id", "ms", "x", *FEATURES, "y"]
    want = ours(events, labels, 1_000).select(columns).sort("id", "ms")
    got = by_polars(events, labels).select(columns).sort("id", "ms")
    if not got.select("id", "ms", "y").equals(want.select("id", "ms", "y")):
        raise AssertionError("polars' rows or labels differ from the replay's")
    if want["y"].null_count() in (0, want.height):
        raise AssertionError("the check needs rows with and without a label")
    for f in FEATURES:
        if not np.allclose(got[f].to_numpy(), want[f].to_numpy(), rtol=1e-9, atol=1e-12):
            raise AssertionError(f"polars' {f} differs from the replay's")


def main(quick: bool = False) -> dict:
    """Run the training-table race, print its table, return the figures."""
    n = 100_000 if quick else 300_000
    rounds = 3 if quick else 5
    with tempfile.TemporaryDirectory() as tmp:
        events, labels = write_files(n, Path(tmp))
        with tempfile.TemporaryDirectory() as small:
            _check_same_tables(*write_files(20_000, Path(small)))
        print("training: the replay and polars agree on 20,000 events; timing ...")

        def run(build: Any) -> Any:
            def go() -> int:
                return len(build())

            return go

        contenders = {
            "training_table, frames of 1,000": run(lambda: ours(events, labels, 1_000)),
            "training_table, frames of 5,000": run(lambda: ours(events, labels, 5_000)),
            "training_table, frames of 50,000 (default)": run(lambda: ours(events, labels, 50_000)),
            "polars by hand (rolling_*_by, join_asof)": run(lambda: by_polars(events, labels)),
        }
        runs, cpu = with_cpu_rates(contenders)
        results = alternate(runs, rounds=rounds, warmup=not quick)
        per_cpu = per_cpu_second(results, cpu)
    title = (
        f"training table: {n:,} events from Parquet, {N_KEYS:,} keys, mean and max over 60 s,"
        " labels within 1 s (file to table)"
    )
    print(format_table(title + " (wall clock)", results, unit="events/s"), flush=True)
    print(format_table(title + " (per CPU-second)", per_cpu, unit="events/cpu-s"), flush=True)
    print(f"  load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return {
        "events": n,
        "keys": N_KEYS,
        "results": [m.as_dict() for m in results],
        "results_per_cpu_second": [m.as_dict() for m in per_cpu],
    }


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
