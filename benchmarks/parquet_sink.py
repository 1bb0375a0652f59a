"""The light pipeline with ``parquet_sink`` as a second sink, next to the same pipeline without it.

The workload is :mod:`benchmarks.pipeline`'s light pipeline (JSON readings
from 1,000 sensors on a 2-partition topic → mean of each sensor's last 10
temperatures → an MLP → JSON results to a topic), one Bytewax worker, a
snapshot every second (so files are staged and committed as in a running
flow). The contender adds ``parquet_sink`` on the scored frames, writing
hive-partitioned zstd Parquet to a local directory: the target is no
slowdown beyond 10 % (issue #18). Both run in alternating rounds in one
process; the ratio of the medians is the result. The files are checked to
hold every scored reading once.

    python -m benchmarks.parquet_sink [--events N] [--rounds R]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import polars as pl
from bytewax.dataflow import Dataflow
from bytewax.testing import run_main

from benchmarks.harness import alternate, format_table
from benchmarks.pipeline import PARTITIONS, _readings, build_mlp, light_results
from streamml import kafka
from streamml.broker import EmbeddedBroker
from streamml.objectstore import parquet_sink
from streamml.serde import JsonSerde
from streamml.testing import produce_all

EPOCH = timedelta(seconds=1)


def light_pipeline(bootstrap: str, topic: str, out_topic: str, model: bytes, parquet: str | None):
    """The light pipeline; with ``parquet``, its results also go to Parquet files there."""
    flow = Dataflow("light_pipeline_parquet")
    # shards=8: rolling's default, which this benchmark has always run with
    results = light_results(flow, bootstrap, topic, model, shards=8)
    kafka.sink(
        "out", results, brokers=bootstrap, topic=out_topic, value_serde=JsonSerde(), key="sensor_id"
    )
    if parquet is not None:
        parquet_sink("files", results, path=parquet, time="ts")
    return flow


def main(quick: bool = False, events: int | None = None, rounds: int | None = None) -> dict:
    n = events or (100_000 if quick else 400_000)
    rounds = rounds or 5
    model = build_mlp()
    root = Path(tempfile.mkdtemp(prefix="parquet-bench-"))
    written: list[Path] = []
    try:
        with EmbeddedBroker() as broker:
            broker.create_topic("readings", partitions=PARTITIONS)
            print(f"producing {n:,} JSON readings ...", flush=True)
            produce_all(broker.bootstrap, "readings", _readings(n))
            runs = iter(range(10**6))

            def run(with_parquet: bool) -> int:
                i = next(runs)
                broker.create_topic(f"results-{i}")
                where = root / f"run-{i}" if with_parquet else None
                flow = light_pipeline(
                    broker.bootstrap,
                    "readings",
                    f"results-{i}",
                    model,
                    None if where is None else str(where),
                )
                run_main(flow, epoch_interval=EPOCH)
                if where is not None:
                    written.append(where)
                return n

            start = time.perf_counter()
            results = alternate(
                {
                    "light pipeline → Kafka": lambda: run(False),
                    "light pipeline → Kafka + Parquet files": lambda: run(True),
                },
                rounds=rounds,
                warmup=False,
            )
        print(
            format_table(
                f"parquet_sink as a second sink, {n:,} events, a snapshot every "
                f"{EPOCH.total_seconds():g} s, events/s",
                results,
                "ev/s",
            )
        )
        print(f"({time.perf_counter() - start:.0f} s)")
        files = sorted(written[-1].rglob("*.parquet"))
        rows = pl.concat([pl.read_parquet(f) for f in files])
        if rows.height != n or rows.select("sensor_id", "ts").n_unique() != n:
            raise AssertionError(
                f"the Parquet files hold {rows.height:,} rows, not {n:,} once each"
            )
        print(f"the last run wrote {len(files)} files holding every reading once", flush=True)
        ratio = results[1].median / results[0].median
        print(f"with the Parquet sink: {ratio:.3f}x the rate without it", flush=True)
        return {
            "parquet_sink": [m.as_dict() for m in results],
            "events": n,
            "ratio": ratio,
            "files_last_run": len(files),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.parquet_sink",
        description="The light pipeline with and without parquet_sink as a second sink.",
    )
    parser.add_argument("--events", type=int, default=400_000, help="readings (default 400,000)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    args = parser.parse_args()
    main(events=args.events, rounds=args.rounds)
