"""``streamml ingest``: the agent's command line (the parser and the foreground run).

``streamml.cli`` adds this subcommand with :func:`add_parser` and runs it
with :func:`run`; everything about the agent's options lives here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import signal
import sys
import threading
from contextlib import ExitStack
from typing import Any

from streamml.broker import BrokerNotFound, BrokerStartError, EmbeddedBroker, create_topics
from streamml.ingest.agent import IngestAgent
from streamml.ingest.dirwatch import DirWatch
from streamml.ingest.edge import EdgeModel
from streamml.ingest.http import HttpInput
from streamml.ingest.keys import key_function
from streamml.ingest.logtail import LogTail
from streamml.ingest.source import Source
from streamml.ingest.spool import SpoolError
from streamml.tuning import relaxed_gc

__all__ = ["add_parser", "parse_size", "run"]

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}


def parse_size(text: str) -> int:
    """Bytes from ``512M``, ``2G``, ``64Mi`` or a plain number.

    Examples:
        >>> parse_size("256M"), parse_size("1Gi"), parse_size("4096")
        (256000000, 1073741824, 4096)
    """
    m = re.fullmatch(r"\s*(\d+)\s*([kmg]i?)?b?\s*", text.lower())
    if not m or int(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r}: give a positive number like 256M or 2G")
    return int(m.group(1)) * _UNITS[m.group(2) or ""]


def _key_spec(text: str) -> str:
    try:
        key_function(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--http {text!r}: give PORT or HOST:PORT") from None
    return host or "127.0.0.1", number


def _config_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--producer-config {text!r}: give NAME=VALUE")
    return name, value


def _edge_model(text: str) -> EdgeModel:
    module, sep, attr = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"--model {text!r}: give MODULE:NAME of an EdgeModel")
    try:
        found = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise argparse.ArgumentTypeError(f"--model {text!r}: {exc}") from None
    if not isinstance(found, EdgeModel):
        raise argparse.ArgumentTypeError(
            f"--model {text!r} is a {type(found).__name__}; it must be a streamml.ingest.EdgeModel"
        )
    return found


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``ingest`` to the ``streamml`` command's subparsers."""
    p = commands.add_parser(
        "ingest",
        help="send files, log lines and HTTP posts to a Kafka topic (an edge agent)",
        description=(
            "Watch a directory for new files, tail log files (following rotation) and/or "
            "accept HTTP POSTs, and produce them to one Kafka topic, batched and compressed. "
            "Nothing is lost while the broker is away (records wait in a bounded on-disk "
            "spool; when it is full, inputs pause) and nothing is sent twice after a "
            "restart (positions in --state are committed after delivery)."
        ),
        epilog=(
            "examples:\n"
            "  streamml ingest --brokers kafka:9092 --topic frames --state /var/lib/ingest/cam "
            "--dir /data/cam --pattern '*.jpg' --key 'name-regex:^(cam\\d+)_' --delete-sent\n"
            "  streamml ingest --brokers kafka:9092 --topic logs --state /var/lib/ingest/app "
            "--tail /var/log/app.log --key 'regex:user=(\\w+)'\n"
            "  streamml ingest --brokers kafka:9092 --topic events --state /var/lib/ingest/http "
            "--http 0.0.0.0:8080 --key json:device_id"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--brokers",
        help="Kafka bootstrap servers (default: start an embedded broker and create --topic)",
    )
    p.add_argument("--topic", required=True, help="topic to produce to")
    p.add_argument(
        "--state",
        required=True,
        metavar="DIR",
        help="the agent's directory: positions, spool, refused records (keep it across restarts)",
    )
    inputs = p.add_argument_group("inputs (at least one)")
    inputs.add_argument(
        "--dir",
        action="append",
        default=[],
        metavar="PATH",
        help="watch a directory: each new whole file is a record (repeatable)",
    )
    inputs.add_argument(
        "--pattern", default="*", help="only files matching this glob in --dir (default: *)"
    )
    inputs.add_argument(
        "--delete-sent",
        action="store_true",
        help="delete each --dir file once Kafka has confirmed it",
    )
    inputs.add_argument(
        "--tail",
        action="append",
        default=[],
        metavar="FILE",
        help="tail a log file: each line is a record; rotation followed (repeatable)",
    )
    inputs.add_argument(
        "--http",
        type=_host_port,
        metavar="[HOST:]PORT",
        help="accept POST /records (one record, or one per line with ?lines=1); GET /health",
    )
    out = p.add_argument_group("records")
    out.add_argument(
        "--key",
        type=_key_spec,
        default="name",
        help="none | name | name-regex:PATTERN | regex:PATTERN | json:FIELD (default: name)",
    )
    out.add_argument(
        "--model",
        type=_edge_model,
        metavar="MODULE:NAME",
        help="an EdgeModel to run on every read; its result goes with or instead of the data",
    )
    send = p.add_argument_group("sending")
    send.add_argument(
        "--compression",
        choices=["none", "gzip", "snappy", "lz4", "zstd"],
        default="lz4",
        help="batch compression (default: lz4)",
    )
    send.add_argument(
        "--linger-ms", type=int, default=20, help="wait up to this long to fill a batch"
    )
    send.add_argument(
        "--producer-config",
        type=_config_pair,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any librdkafka producer setting, e.g. security.protocol=SSL (repeatable)",
    )
    send.add_argument(
        "--spool-max",
        type=parse_size,
        default=parse_size("256M"),
        metavar="SIZE",
        help="bound of the on-disk spool; when full, inputs pause (default: 256M)",
    )
    send.add_argument(
        "--no-fsync",
        action="store_true",
        help="do not fsync spool blocks (faster; survives a killed agent, not a power cut)",
    )
    p.add_argument(
        "--progress",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="print a progress line this often (0: only at the end)",
    )
    return p


def _sources(args: argparse.Namespace) -> list[Source]:
    found: list[Source] = [
        DirWatch(d, pattern=args.pattern, delete_sent=args.delete_sent) for d in args.dir
    ]
    found.extend(LogTail(f) for f in args.tail)
    return found


def run(args: argparse.Namespace) -> int:
    """Run the agent in the foreground until Ctrl-C or SIGTERM, printing its progress."""
    if not (args.dir or args.tail or args.http):
        print("streamml ingest: give at least one input: --dir, --tail or --http", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    logging.getLogger("streamml.ingest").setLevel(logging.INFO)  # broker back, inputs resumed
    config = {
        "compression.type": args.compression,
        "linger.ms": args.linger_ms,
        **dict(args.producer_config),
    }
    with ExitStack() as stack:
        stack.enter_context(relaxed_gc())  # a record is a few short-lived objects (see tuning)
        brokers = args.brokers
        try:
            if brokers is None:
                broker = stack.enter_context(EmbeddedBroker())
                brokers = broker.bootstrap
                create_topics(brokers, [args.topic])
                print(f"embedded broker on {brokers}, topic {args.topic!r} created")
            agent = IngestAgent(
                brokers,
                args.topic,
                args.state,
                sources=_sources(args),
                key=args.key,
                edge=args.model,
                http=None if args.http is None else HttpInput(*args.http),
                spool_max_bytes=args.spool_max,
                producer_config=config,
                fsync=not args.no_fsync,
            )
        except (BrokerNotFound, BrokerStartError, SpoolError, ValueError, OSError) as exc:
            print(f"streamml ingest: {exc}", file=sys.stderr)
            return 1
        print(f"ingest to {args.topic!r} on {brokers}; state in {args.state}", flush=True)
        agent.start()
        every = args.progress or 1.0
        try:
            while agent.running and not stop.wait(every):
                if args.progress:
                    print(agent.progress.line(), flush=True)
        except KeyboardInterrupt:
            pass
        agent.stop()
        print(f"stopped: {agent.progress.line()}", flush=True)
        if agent.error is not None:
            print(f"streamml ingest: stopped on an error: {agent.error}", file=sys.stderr)
            return 1
    return 0
