"""Run the sensor pipeline end to end: broker, generated data, the dataflow, a summary.

python -m examples.sensor_anomaly --events 100000
python -m examples.sensor_anomaly --brokers kafka:9092 --registry http://registry:8081
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from bytewax.testing import run_main
from confluent_kafka import Consumer, TopicPartition

from examples.sensor_anomaly.corrupt import corrupt_payloads
from examples.sensor_anomaly.flow import SCHEMA, Topics, build_flow
from examples.sensor_anomaly.generate import generate_fleet
from streamml.broker import EmbeddedBroker, create_topics
from streamml.serde import ConfluentAvroSerde
from streamml.testing import consume_all, produce_all


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.sensor_anomaly",
        description=(
            "Generate a fleet of IoT sensor readings as Avro (Confluent wire format), "
            "produce them with a few deliberately corrupt messages, run the sensor "
            "dataflow over Kafka, and print what came out: results, dead letters, "
            "events per second. With no --brokers, an embedded tansu broker is "
            "started on a free loopback port and stopped at the end."
        ),
    )
    parser.add_argument(
        "--events", type=int, default=100_000, help="readings to generate (default: %(default)s)"
    )
    parser.add_argument(
        "--sensors", type=int, default=50, help="sensors in the fleet (default: %(default)s)"
    )
    parser.add_argument(
        "--corrupt",
        type=int,
        default=None,
        help="corrupt messages to mix in (default: 0.1%% of --events, at least 6)",
    )
    parser.add_argument(
        "--brokers", help="host:port of an existing Kafka cluster (default: embedded broker)"
    )
    parser.add_argument(
        "--registry",
        default="mock://sensor-anomaly",
        help="schema registry URL (default: an in-process mock)",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=3,
        help="partitions of the readings topic (default: %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("out/sensor_anomaly"), help="where to write the summary"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    if args.events < 1:
        parser.error(f"--events must be >= 1; got {args.events}")
    if args.corrupt is None:
        args.corrupt = max(6, args.events // 1000)
    return args


class _Progress(threading.Thread):
    """Counts what has reached the output topics and prints one updating line."""

    def __init__(self, bootstrap: str, topics: list[str], total: int, enabled: bool) -> None:
        super().__init__(daemon=True)
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "progress", "enable.auto.commit": False}
        )
        meta = self._consumer.list_topics(timeout=10).topics
        self._consumer.assign([TopicPartition(t, p, 0) for t in topics for p in meta[t].partitions])
        self._total, self._enabled = total, enabled
        self._done = threading.Event()
        self.count = 0

    def run(self) -> None:
        start = last_print = time.monotonic()
        while not self._done.is_set():
            msgs = self._consumer.consume(10_000, timeout=0.1)
            self.count += sum(1 for m in msgs if m.error() is None)
            now = time.monotonic()
            if self._enabled and now - last_print >= 0.5:
                last_print = now
                rate = self.count / (now - start)
                pct = 100 * self.count / self._total
                print(
                    f"\r  processed {self.count:,} / {self._total:,} ({pct:5.1f}%)  {rate:,.0f} ev/s",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
        self._consumer.close()

    def stop(self) -> None:
        self._done.set()
        self.join()
        if self._enabled:
            print(file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    with ExitStack() as stack:
        if args.brokers:
            bootstrap = args.brokers
            topics = Topics(
                *(
                    f"{name}-{uuid.uuid4().hex[:8]}"
                    for name in (Topics.readings, Topics.results, Topics.dead_letters)
                )
            )
            print(f"using the cluster at {bootstrap}")
        else:
            broker = stack.enter_context(EmbeddedBroker())
            bootstrap = broker.bootstrap
            topics = Topics()
            print(f"started an embedded tansu broker on {bootstrap}")
        create_topics(bootstrap, [topics.readings], partitions=args.partitions)
        create_topics(bootstrap, [topics.results, topics.dead_letters], partitions=1)

        from confluent_kafka.schema_registry import SchemaRegistryClient

        registry = SchemaRegistryClient.new_client({"url": args.registry})
        serde = ConfluentAvroSerde(registry, schema=SCHEMA, subject=f"{topics.readings}-value")

        print(
            f"generating {args.events:,} readings from {args.sensors} sensors, plus {args.corrupt} corrupt messages"
        )
        fleet = generate_fleet(args.events, n_sensors=args.sensors)
        payloads = serde.encode_batch(fleet.events)
        keys = [e["sensor_id"].encode() for e in fleet.events]
        bad = corrupt_payloads(serde, fleet.events[0], args.corrupt)
        messages = list(zip(keys, payloads))
        stride = max(1, len(messages) // (len(bad) + 1))
        for i, (_kind, payload) in enumerate(bad):
            messages.insert((i + 1) * stride + i, (b"corrupt", payload))
        t0 = time.perf_counter()
        produced = produce_all(bootstrap, topics.readings, messages)
        print(
            f"produced {produced:,} messages to {topics.readings!r} in {time.perf_counter() - t0:.1f} s"
        )

        flow = build_flow(bootstrap, topics=topics, registry=registry)
        progress = _Progress(
            bootstrap, [topics.results, topics.dead_letters], produced, not args.quiet
        )
        progress.start()
        t0 = time.perf_counter()
        try:
            run_main(flow)
        finally:
            progress.stop()
        wall = time.perf_counter() - t0

        results = consume_all(bootstrap, topics.results)
        dead = consume_all(bootstrap, topics.dead_letters)
        reasons = Counter(json.loads(m.value)["error_type"] for m in dead)
        summary = {
            "events_in": produced,
            "results_out": len(results),
            "dead_lettered": len(dead),
            "dead_letter_reasons": dict(sorted(reasons.items())),
            "corrupt_injected": len(bad),
            "wall_seconds": round(wall, 3),
            "events_per_second": round(produced / wall),
            "topics": {
                "readings": topics.readings,
                "results": topics.results,
                "dead_letters": topics.dead_letters,
            },
            "accounted_for": produced == len(results) + len(dead),
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    print()
    print("summary")
    print(f"  events in       {summary['events_in']:>10,}")
    print(f"  results out     {summary['results_out']:>10,}   -> topic {topics.results!r}")
    print(
        f"  dead-lettered   {summary['dead_lettered']:>10,}   -> topic {topics.dead_letters!r}  {summary['dead_letter_reasons']}"
    )
    print(f"  wall time       {wall:>10.2f} s")
    print(f"  throughput      {summary['events_per_second']:>10,} events/s")
    print(f"  in = out + dead {'yes' if summary['accounted_for'] else 'NO'}")
    print(f"  summary file    {args.out / 'summary.json'}")
    return 0 if summary["accounted_for"] else 1


if __name__ == "__main__":
    sys.exit(main())
