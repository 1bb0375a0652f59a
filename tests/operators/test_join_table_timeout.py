"""Integration: ``kafka_table(broker_timeout=)`` fails the dataflow when no broker is reachable.

Without the option a table reader retries a dead broker forever (librdkafka
only logs it); with it, the reader raises
:class:`streamml.kafka.BrokerUnreachable` as :func:`streamml.kafka.source`
does. The tests that kill a broker start their own: killing the session's
would break other tests. That a table without the option keeps waiting is
not run here: its ``run_main`` would never return, and a Bytewax run in a
thread cannot be stopped (``tests/reliability/test_outage.py`` shows it for
the source, in a process of its own).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from datetime import timedelta
from typing import Any

import bytewax.operators as op
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main
from streamml.operators.join import TableReady, kafka_table

from streamml.broker import EmbeddedBroker
from streamml.kafka import BrokerUnreachable
from streamml.serde import JsonSerde
from streamml.testing import produce_all

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Run:
    """``run_main(flow)`` in a daemon thread, so a flow that never fails cannot hang the test."""

    def __init__(self, flow: Dataflow) -> None:
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(flow,), daemon=True)
        self._thread.start()

    def _run(self, flow: Dataflow) -> None:
        try:
            run_main(flow)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            self.error = exc

    def join(self, timeout: float) -> bool:
        """Whether the flow ended within ``timeout`` seconds."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


def _unreachable(error: BaseException | None) -> BrokerUnreachable:
    """The BrokerUnreachable that ``error`` is or was raised from."""
    seen = error
    while seen is not None and not isinstance(seen, BrokerUnreachable):
        seen = seen.__cause__ or seen.__context__
    assert seen is not None, f"expected BrokerUnreachable, got {error!r}"
    return seen


def test_table_on_a_dead_address_fails_at_start_after_broker_timeout() -> None:
    nobody = f"127.0.0.1:{_free_port()}"
    flow = Dataflow("table_nobody")
    table = kafka_table(
        "t",
        flow,
        brokers=nobody,
        topic="devices",
        value_serde=JsonSerde(),
        broker_timeout=timedelta(seconds=2),
    )
    op.output("rows", table.changelog, TestingSink([]))
    started = time.monotonic()
    run = _Run(flow)
    assert run.join(60), "the table kept waiting for a broker"
    took = time.monotonic() - started
    err = _unreachable(run.error)
    assert f"no Kafka broker of {nobody} answered within broker_timeout=2 s at start" in str(err)
    assert took >= 2


def test_table_whose_broker_dies_while_tailing_fails_after_broker_timeout(
    topic_name: str,
) -> None:
    with EmbeddedBroker() as own:
        own.create_topic(topic_name, partitions=2, config={"cleanup.policy": "compact"})
        rows = [(f"dev-{i:03d}".encode(), orjson.dumps({"site": i % 5})) for i in range(200)]
        bootstrap = own.bootstrap
        produce_all(bootstrap, topic_name, rows)
        flow = Dataflow("table_killed")
        table = kafka_table(
            "t",
            flow,
            brokers=bootstrap,
            topic=topic_name,
            value_serde=JsonSerde(),
            broker_timeout=timedelta(seconds=3),
        )
        read: list[Any] = []
        loaded = threading.Event()

        def seen(_step: str, item: Any) -> None:
            read.append(item)
            if sum(type(x) is TableReady for x in read) == 2:
                loaded.set()

        op.inspect("seen", table.changelog, seen)
        run = _Run(flow)
        assert loaded.wait(60), f"the table was not read: {len(read)} items"
        os.kill(own.pid, signal.SIGKILL)
        killed = time.monotonic()
        assert run.join(60), "the table kept waiting for the dead broker"
        failed_after = time.monotonic() - killed
    err = _unreachable(run.error)
    assert f"no Kafka broker of {bootstrap} reachable for" in str(err)
    assert "(broker_timeout=3 s)" in str(err)
    assert failed_after >= 3
    assert len([x for x in read if type(x) is not TableReady]) == len(rows)


@pytest.mark.parametrize("bad", [timedelta(0), timedelta(seconds=-1)])
def test_broker_timeout_must_be_positive(bad: timedelta) -> None:
    with pytest.raises(ValueError, match="broker_timeout must be > 0"):
        kafka_table(
            "t",
            Dataflow("bad"),
            brokers="127.0.0.1:9092",
            topic="devices",
            value_serde=JsonSerde(),
            broker_timeout=bad,
        )


def test_broker_timeout_refuses_an_own_error_cb() -> None:
    with pytest.raises(ValueError, match="leave error_cb out of add_config"):
        kafka_table(
            "t",
            Dataflow("cb"),
            brokers="127.0.0.1:9092",
            topic="devices",
            value_serde=JsonSerde(),
            add_config={"error_cb": print},  # type: ignore[dict-item]
            broker_timeout=timedelta(seconds=5),
        )
    # broker_timeout has a default (60 s): an own error_cb needs broker_timeout=None.
    with pytest.raises(ValueError, match="or pass broker_timeout=None"):
        kafka_table(
            "t",
            Dataflow("cb_default"),
            brokers="127.0.0.1:9092",
            topic="devices",
            value_serde=JsonSerde(),
            add_config={"error_cb": print},  # type: ignore[dict-item]
        )
    kafka_table(
        "t",
        Dataflow("cb_ok"),
        brokers="127.0.0.1:9092",
        topic="devices",
        value_serde=JsonSerde(),
        add_config={"error_cb": print},  # type: ignore[dict-item]
        broker_timeout=None,
    )
