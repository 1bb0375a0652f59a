"""A model served over HTTP, called from the stream: per-event REST calls, batched remote calls, in-process.

The pipeline benchmark's MLP (4→64→64→2, :func:`benchmarks.pipeline.build_mlp`)
is served by ``streamml serve`` in its own process on loopback (no waiting
for company: ``--max-wait-ms 0``). Every contender reads the same JSON
telemetry topic on the embedded broker and writes each reading with its
score to a topic of its own (the flows and the router of
``examples/model_microservice``):

- **per-event REST router**: the article's pattern — a consumer loop making
  one Open Inference REST call per message over a kept-alive connection,
  then producing the answer (on the first ``REST_EVENTS`` readings; its rate
  is per reading);
- **streamml remote**: ``kafka.source(frames)`` → ``infer`` with a
  :class:`~streamml.models.RemoteModel` (binary tensors, requests of at most
  10,000 rows, 2 in flight) → ``kafka.sink``;
- **streamml in-process**: the same dataflow with the same ONNX file as an
  :class:`~streamml.models.OnnxModel` (one intra-op thread).

Then latency: each dataflow runs as its own process, tailing a topic that a
paced producer fills with readings stamped with their send time; a consumer
records result arrival minus send time. Offered the remote flow's bounded
rate, the remote flow delivers its sustained maximum beside the producer and
the consumer; half load is half of that, for both flows. The remote model's added latency is its p50/p99 minus the
in-process flow's at the same load.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import orjson
import polars as pl
from bytewax.dataflow import Dataflow
from bytewax.testing import run_main
from confluent_kafka import Producer

from benchmarks.harness import alternate, format_table
from benchmarks.latency import run_paced
from benchmarks.pipeline import build_mlp
from examples.model_microservice.flow import READING, Topics, build_flow
from examples.model_microservice.generate import telemetry
from examples.model_microservice.router import per_event_router
from examples.model_microservice.service import NAME, ModelService
from streamml.broker import EmbeddedBroker
from streamml.models import OnnxModel
from streamml.models.remote import OpenInference, RemoteModel
from streamml.testing import produce_all

REST_EVENTS = 3_000
"""Readings the per-event router scores in a round (it runs ~100x slower)."""


def remote_model(url: str) -> RemoteModel:
    """The remote model as the benchmark and the example configure it."""
    return RemoteModel(url, OpenInference(NAME, binary=True), max_rows=10_000, max_in_flight=2)


def latency_flow(
    bootstrap: str, source: str, out: str, model_path: str, url: str | None
) -> Dataflow:
    """The example's flow tailing ``source``, keeping each reading's ``sent`` stamp.

    Remote when ``url`` is given, else in-process. Runs under ``python -m bytewax.run``::

        python -m bytewax.run "benchmarks.remote:latency_flow('127.0.0.1:9092', 'in', 'out', 'mlp.onnx', None)"
    """
    model = remote_model(url) if url else OnnxModel(model_path, intra_op_threads=1)
    topics = Topics(telemetry=source, scored=out, dead_letters=f"{out}-dead")
    schema = {**READING, "sent": pl.Float64}
    return build_flow(bootstrap, topics, model, tail=True, schema=schema)


def _pace(producer: Producer, topic: str, rate: float, seconds: float, start: int) -> int:
    """Produce telemetry at ``rate`` readings/s for ``seconds``, in 2 ms slices, each stamped ``sent``."""
    sent, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        now_ms = time.time() * 1000
        for _ in range(int(elapsed * rate) - sent):
            i = start + sent
            machine = f"machine-{i % 200:03d}"
            reading = {
                "machine_id": machine,
                "seq": i,
                "ts": int(now_ms),
                "temperature": 70.0 + (i % 7),
                "vibration": 2.0,
                "pressure": 5.0,
                "rpm": 1500.0,
                "sent": now_ms,
            }
            try:
                producer.produce(topic, orjson.dumps(reading), machine.encode())
            except BufferError:  # the broker is behind: this slice is late, the next catches up
                producer.poll(0.01)
                break
            sent += 1
        producer.poll(0)
        time.sleep(0.002)
    producer.flush()
    return sent


def _latency(
    broker: EmbeddedBroker, model_path: str, url: str | None, rate: float, seconds: float
) -> dict:
    run = f"{'remote' if url else 'local'}-{time.monotonic_ns()}"
    source, out = f"lat-in-{run}", f"lat-out-{run}"
    for topic in (source, out, f"{out}-dead"):
        broker.create_topic(topic)
    spec = f"benchmarks.remote:latency_flow({broker.bootstrap!r}, {source!r}, {out!r}, {model_path!r}, {url!r})"
    lat, sent, delivered = run_paced(
        broker.bootstrap, spec, source, out, _pace, rate, seconds, what=f"{run} flow"
    )
    q = statistics.quantiles(lat, n=100)
    return {
        "rate": round(rate),
        "offered_rate": round(sent / seconds),
        "delivered_rate": round(delivered),
        "measured": len(lat),
        "p50_ms": q[49],
        "p99_ms": q[98],
    }


def main(quick: bool = False) -> dict:
    n = 50_000 if quick else 200_000
    rounds = 1 if quick else 3
    seconds = 2.0 if quick else 8.0
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "mlp.onnx"
        model_path.write_bytes(build_mlp())
        base = Topics(telemetry="remote-bench-telemetry")
        broker.create_topic(base.telemetry, partitions=2)
        produce_all(broker.bootstrap, base.telemetry, telemetry(n))
        runs = iter(range(1_000_000))

        def fresh() -> Topics:
            i = next(runs)
            topics = replace(base, scored=f"scored-{i}", dead_letters=f"dead-{i}")
            broker.create_topic(topics.scored)
            broker.create_topic(topics.dead_letters)
            return topics

        with ModelService(model_path) as service:
            remote = remote_model(service.url)
            local = OnnxModel(model_path, intra_op_threads=1)

            def rest() -> int:
                return per_event_router(
                    broker.bootstrap, base.telemetry, fresh().scored, service.url, REST_EVENTS
                )

            def flow(model: object) -> int:
                run_main(build_flow(broker.bootstrap, fresh(), model))
                return n

            results = alternate(
                {
                    "per-event REST router": rest,
                    "streamml remote (streamml serve)": lambda: flow(remote),
                    "streamml in-process": lambda: flow(local),
                },
                rounds=rounds,
            )
            requests = remote.stats()["requests"]
            remote.close()
            print(format_table(f"model as a microservice, {n:,} readings", results, "ev/s"))
            rest_rate, remote_rate, local_rate = (m.median for m in results)
            # Beside the paced producer and the collector the flow keeps up with less than
            # its bounded rate: offered that rate, it delivers its sustained maximum there,
            # and half load is half of that (as in benchmarks/latency.py).
            offered = _latency(broker, str(model_path), service.url, remote_rate, seconds)
            half = min(remote_rate, offered["delivered_rate"]) / 2
            lat_remote = _latency(broker, str(model_path), service.url, half, seconds)
            lat_local = _latency(broker, str(model_path), None, half, seconds)
    added = {
        "p50_ms": lat_remote["p50_ms"] - lat_local["p50_ms"],
        "p99_ms": lat_remote["p99_ms"] - lat_local["p99_ms"],
    }
    summary = {
        "remote_vs_per_event_rest": remote_rate / rest_rate,
        "remote_vs_in_process": remote_rate / local_rate,
    }
    print(
        f"remote = {summary['remote_vs_per_event_rest']:.1f}x the per-event router (target >= 10x), "
        f"{summary['remote_vs_in_process']:.0%} of in-process (target >= 50%); "
        f"{requests} HTTP requests in all rounds\n"
        f"remote flow sustained beside the load generator: {offered['delivered_rate']:,} ev/s\n"
        f"latency at half that ({half:,.0f} ev/s planned; offered "
        f"{lat_remote['offered_rate']:,} and {lat_local['offered_rate']:,}): remote p50 {lat_remote['p50_ms']:.0f} ms, "
        f"p99 {lat_remote['p99_ms']:.0f} ms; in-process p50 {lat_local['p50_ms']:.0f} ms, "
        f"p99 {lat_local['p99_ms']:.0f} ms; added p50 {added['p50_ms']:+.0f} ms, "
        f"p99 {added['p99_ms']:+.0f} ms",
        flush=True,
    )
    return {
        "events": n,
        "rest_events": REST_EVENTS,
        "throughput": [m.as_dict() for m in results],
        **summary,
        "remote_sustained_rate": offered["delivered_rate"],
        "latency_half_load": {"remote": lat_remote, "in_process": lat_local, "added": added},
    }


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
