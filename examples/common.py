"""What every example's ``__main__`` shares: a broker to run on, and a progress line.

Examples are users of the library; this module is theirs, not the library's
(progress output belongs to tools, not to operators).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import fields, is_dataclass, replace
from typing import TypeVar

from confluent_kafka import Consumer, TopicPartition

from streamml.broker import EmbeddedBroker

__all__ = ["TopicProgress", "add_broker_arguments", "open_broker", "unique_topics"]

T = TypeVar("T")


def add_broker_arguments(parser: argparse.ArgumentParser, *, registry: str | None = None) -> None:
    """``--brokers`` (default: an embedded broker) and, if given a default, ``--registry``."""
    parser.add_argument(
        "--brokers", help="host:port of an existing Kafka cluster (default: an embedded broker)"
    )
    if registry is not None:
        parser.add_argument(
            "--registry", default=registry, help="schema registry URL (default: an in-process mock)"
        )


def open_broker(stack: ExitStack, brokers: str | None) -> str:
    """The bootstrap address: ``brokers`` if given, else an embedded broker kept open by ``stack``."""
    if brokers:
        print(f"using the cluster at {brokers}")
        return brokers
    bootstrap = stack.enter_context(EmbeddedBroker()).bootstrap
    print(f"started an embedded tansu broker on {bootstrap}")
    return bootstrap


def unique_topics(topics: T) -> T:
    """The same dataclass of topic names with a run suffix, so runs on a shared cluster never mix.

    Examples:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Topics:
        ...     readings: str = "readings"
        >>> unique_topics(Topics()).readings.startswith("readings-")
        True
    """
    if not is_dataclass(topics):
        raise TypeError(f"expected a dataclass of topic names; got {type(topics).__name__}")
    run = uuid.uuid4().hex[:8]
    return replace(topics, **{f.name: f"{getattr(topics, f.name)}-{run}" for f in fields(topics)})


def _rate(per_second: float) -> str:
    return f"{per_second:,.1f}" if per_second < 100 else f"{per_second:,.0f}"


class TopicProgress(threading.Thread):
    """Counts messages arriving on some topics and shows one updating line on stderr.

    Use it around a bounded run: every input ends as exactly one message on
    one of ``topics`` (a result or a dead letter), so their count over
    ``total`` is the progress. Reads with ``assign()`` (no consumer group).
    """

    def __init__(
        self,
        bootstrap: str,
        topics: list[str],
        total: int,
        *,
        unit: str = "events",
        enabled: bool = True,
    ) -> None:
        super().__init__(daemon=True)
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "progress", "enable.auto.commit": False}
        )
        meta = self._consumer.list_topics(timeout=10).topics
        self._consumer.assign([TopicPartition(t, p, 0) for t in topics for p in meta[t].partitions])
        self._total, self._unit, self._enabled = max(total, 1), unit, enabled
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
                print(
                    f"\r  processed {self.count:,} / {self._total:,} ({100 * self.count / self._total:5.1f}%)"
                    f"  {_rate(self.count / (now - start))} {self._unit}/s   ",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
        self._consumer.close()

    def __enter__(self) -> TopicProgress:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self.join()
        if self._enabled:
            print(file=sys.stderr)
