"""Run the sensor-anomaly pipeline end to end: broker, model, data, dataflow, evaluation.

python -m examples.sensor_anomaly --events 100000
python -m examples.sensor_anomaly --brokers kafka:9092 --registry http://registry:8081
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from bytewax.testing import run_main

from examples.common import TopicProgress, add_broker_arguments, open_broker, unique_topics
from examples.sensor_anomaly.corrupt import corrupt_payloads
from examples.sensor_anomaly.flow import SCHEMA, Topics, build_flow
from examples.sensor_anomaly.generate import generate_fleet
from examples.sensor_anomaly.model import DEFAULT_DIR, build_model
from examples.sensor_anomaly.report import evaluate, plot_sensor, write_windows
from streamml.broker import create_topics
from streamml.serde import ConfluentAvroSerde
from streamml.testing import consume_all, produce_all
from streamml.tuning import relaxed_gc


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.sensor_anomaly",
        description=(
            "Generate a fleet of IoT sensors (temperature, vibration, pressure) with injected "
            "anomalies, produce the readings as Avro (Confluent wire format) with a few "
            "deliberately corrupt messages, and run the sensor-anomaly dataflow: rolling "
            "features, an IsolationForest in ONNX Runtime and a z-score detector, anomaly "
            "windows to an alerts topic, bad records to a dead-letter topic. Prints progress "
            "and a summary (events/s, windows found vs injected, precision, recall, detection "
            "delay) and writes a results file and a plot. With no --brokers, an embedded tansu "
            "broker is started on a free loopback port and stopped at the end."
        ),
    )
    parser.add_argument(
        "--events", type=int, default=200_000, help="readings to generate (default: %(default)s)"
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
    add_broker_arguments(parser, registry="mock://sensor-anomaly")
    parser.add_argument(
        "--partitions",
        type=int,
        default=3,
        help="partitions of the readings topic (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("out/sensor_anomaly"),
        help="where results go (default: %(default)s)",
    )
    parser.add_argument(
        "--model-dir", type=Path, default=DEFAULT_DIR, help="model cache (default: %(default)s)"
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    if args.events < 1:
        parser.error(f"--events must be >= 1; got {args.events}")
    if args.corrupt is None:
        args.corrupt = max(6, args.events // 1000)
    return args


def _secs(value: object) -> str:
    return "-" if value is None else f"{value.total_seconds():.0f} s"


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    model = build_model(args.model_dir)
    print(
        f"model: IsolationForest {model.onnx} (normal-data score p99.9 {model.quantiles['q999']:.3f})"
    )
    with ExitStack() as stack:
        bootstrap = open_broker(stack, args.brokers)
        topics = unique_topics(Topics()) if args.brokers else Topics()
        create_topics(bootstrap, [topics.readings], partitions=args.partitions)
        create_topics(bootstrap, [topics.scores, topics.alerts, topics.dead_letters], partitions=1)

        from confluent_kafka.schema_registry import SchemaRegistryClient

        registry = SchemaRegistryClient.new_client({"url": args.registry})
        serde = ConfluentAvroSerde(registry, schema=SCHEMA, subject=f"{topics.readings}-value")

        fleet = generate_fleet(args.events, n_sensors=args.sensors)
        print(
            f"generated {args.events:,} readings from {args.sensors} sensors with {len(fleet.truth)} "
            f"injected anomalies, plus {args.corrupt} corrupt messages"
        )
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

        flow = build_flow(bootstrap, topics=topics, registry=registry, model=model)
        outputs = [topics.scores, topics.dead_letters]
        with TopicProgress(bootstrap, outputs, produced, enabled=not args.quiet):
            t0 = time.perf_counter()
            with relaxed_gc():  # see streamml.tuning
                run_main(flow)
            wall = time.perf_counter() - t0

        scores = consume_all(bootstrap, topics.scores)
        dead = consume_all(bootstrap, topics.dead_letters)
        alerts = [json.loads(m.value) for m in consume_all(bootstrap, topics.alerts)]

    reasons = Counter(json.loads(m.value)["error_type"] for m in dead)
    evaluation = evaluate(alerts, fleet.truth)
    args.out.mkdir(parents=True, exist_ok=True)
    write_windows(args.out / "windows.jsonl", alerts)
    plotted = (
        None
        if args.no_plot
        else plot_sensor(args.out / "sensor.png", fleet.events, fleet.truth, alerts)
    )
    summary = {
        "events_in": produced,
        "scored": len(scores),
        "dead_lettered": len(dead),
        "dead_letter_reasons": dict(sorted(reasons.items())),
        "corrupt_injected": len(bad),
        "accounted_for": produced == len(scores) + len(dead),
        "wall_seconds": round(wall, 3),
        "events_per_second": round(produced / wall),
        "injected_anomalies": len(fleet.truth),
        "detectors": {name: score.as_dict() for name, score in evaluation.items()},
        "topics": {
            name: getattr(topics, name) for name in ("readings", "scores", "alerts", "dead_letters")
        },
        "model": str(model.onnx),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    print("\nsummary")
    print(f"  events in        {produced:>10,}   ({len(bad)} of them corrupt on purpose)")
    print(f"  scored           {len(scores):>10,}   -> topic {topics.scores!r}")
    print(
        f"  dead-lettered    {len(dead):>10,}   -> topic {topics.dead_letters!r}  {summary['dead_letter_reasons']}"
    )
    print(f"  in = out + dead  {'yes' if summary['accounted_for'] else 'NO'}")
    print(f"  wall time        {wall:>10.2f} s   ({summary['events_per_second']:,} events/s)")
    print(f"  anomaly windows  -> topic {topics.alerts!r}; {len(fleet.truth)} injected")
    print(
        f"    {'detector':<10} {'found':>6} {'hits':>5} {'precision':>9} {'recall':>7} {'median delay':>13}  mean anomaly"
    )
    for name, s in evaluation.items():
        print(
            f"    {name:<10} {s.found:>6} {s.hits:>5} {s.precision:>9.2f} {s.recall:>7.2f} "
            f"{_secs(s.median_delay):>13}  {_secs(s.mean_length)}"
        )
    print(f"  results          {args.out / 'summary.json'}, {args.out / 'windows.jsonl'}")
    if plotted:
        print(f"  plot             {args.out / 'sensor.png'} ({plotted})")
    return 0 if summary["accounted_for"] else 1


if __name__ == "__main__":
    sys.exit(main())
