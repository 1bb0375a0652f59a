"""The ``streamml`` command: the library's own tools.

streamml broker            # a Kafka-protocol broker on a free loopback port
streamml broker --port 9092 --topic readings:3
streamml serve model.onnx --name mlp --port 8000   # Open Inference Protocol over HTTP
streamml ingest --brokers kafka:9092 --topic logs --state /var/lib/ingest --tail /var/log/app.log
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from streamml.broker import BrokerNotFound, BrokerStartError, EmbeddedBroker

__all__ = ["main"]


def _topic_spec(text: str) -> tuple[str, int]:
    name, _, partitions = text.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"topic spec {text!r} needs a name, e.g. readings:3")
    try:
        count = int(partitions) if partitions else 1
    except ValueError:
        raise argparse.ArgumentTypeError(f"partitions in {text!r} must be a number") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"partitions in {text!r} must be >= 1")
    return name, count


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamml",
        description="streamml's own tools. Dataflows themselves run with `python -m bytewax.run`.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    broker = commands.add_parser(
        "broker",
        help="run an embedded Kafka-protocol broker in the foreground",
        description=(
            "Run the tansu Kafka-protocol broker (in-memory storage) on loopback until "
            "Ctrl-C. Point any Kafka client, Bytewax's KafkaSource or `--brokers` of "
            "the examples at the address it prints. Storage is in memory: stopping "
            "the broker loses every topic."
        ),
    )
    broker.add_argument("--port", type=int, help="port to listen on (default: a free one)")
    broker.add_argument(
        "--topic",
        action="append",
        type=_topic_spec,
        default=[],
        metavar="NAME[:PARTITIONS]",
        help="create a topic at start (repeatable), e.g. --topic readings:3",
    )
    serve = commands.add_parser(
        "serve",
        help="serve an ONNX model over the Open Inference Protocol (KServe V2 HTTP)",
        description=(
            "Serve one ONNX model at /v2/models/NAME (infer, metadata, ready), with dynamic "
            "batching, live version swaps (--watch, or POST "
            "/v2/repository/models/NAME/load) and Prometheus metrics at /metrics. Needs the "
            "`serve` extra: pip install 'streamml[serve]'."
        ),
    )
    from streamml.serve.command import add_arguments as add_serve_arguments

    add_serve_arguments(serve)
    from streamml.ingest.command import add_parser as add_ingest_parser

    add_ingest_parser(commands)
    return parser


def _run_broker(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Python leaves SIGINT ignored when it starts with it ignored (a shell's background job,
    # e.g. `make test &`): Ctrl-C, the documented way to stop, must work there too.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with EmbeddedBroker(port=args.port) as broker:
            for name, partitions in args.topic:
                broker.create_topic(name, partitions=partitions)
                print(f"created topic {name!r} with {partitions} partition(s)")
            print(
                f"tansu broker listening on {broker.bootstrap} (pid {broker.pid}); Ctrl-C stops it"
            )
            sys.stdout.flush()
            while not stop.wait(0.5):
                pass
    except KeyboardInterrupt:
        pass  # Ctrl-C, wherever it lands: the with-block has stopped the broker
    except (BrokerNotFound, BrokerStartError) as exc:
        print(f"streamml broker: {exc}", file=sys.stderr)
        return 1
    print("broker stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``streamml`` command."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _build_parser().parse_args(argv)
    if args.command == "broker":
        return _run_broker(args)
    if args.command == "serve":
        from streamml.serve.command import run as run_serve  # needs the `serve` extra

        return run_serve(args)
    if args.command == "ingest":
        from streamml.ingest.command import run as run_ingest

        return run_ingest(args)
    raise AssertionError(f"unhandled command {args.command}")  # argparse rejects unknown ones


if __name__ == "__main__":
    sys.exit(main())
