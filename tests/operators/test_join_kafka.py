"""Integration: the enrichment table read from a compacted topic on the real broker."""

from __future__ import annotations

import bytewax.operators as op
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from streamml.operators.join import TableReady, enrich, kafka_table
from streamml.operators.join.table import _TableSource

from streamml.serde import JsonSerde
from streamml.testing import produce_all

pytestmark = pytest.mark.integration


def test_enrich_from_compacted_topic_bootstraps_whole_table(broker, topic_name):
    broker.create_topic(topic_name, partitions=3, config={"cleanup.policy": "compact"})
    keys = [f"dev-{i:03d}" for i in range(200)]
    first = [(k.encode(), orjson.dumps({"site": "old", "rev": 0})) for k in keys]
    # The broker does not compact: the reader must keep the last version per key.
    second = [
        (k.encode(), orjson.dumps({"site": f"site-{i % 7}", "rev": 1})) for i, k in enumerate(keys)
    ]
    tombstones = [(k.encode(), None) for k in keys[:20]]
    produce_all(broker.bootstrap, topic_name, first + second + tombstones)

    flow = Dataflow("enrich_kafka")
    table = kafka_table(
        "devices",
        flow,
        brokers=broker.bootstrap,
        topic=topic_name,
        value_serde=JsonSerde(),
        tail=False,
    )
    events = [(k, {"seq": i}) for i, k in enumerate(keys * 2)] + [("dev-999", {"seq": -1})]
    # Events are ready at once, long before the table is read: the bootstrap holds them.
    out = enrich(
        "enrich", op.input("events", flow, TestingSource(events, batch_size=50)), table.changelog
    )
    oks, errs, table_errs = [], [], []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    op.output("table_errs", table.errs, TestingSink(table_errs))
    run_main(flow)

    assert table_errs == []
    want = {k: f"site-{i % 7}" for i, k in enumerate(keys) if i >= 20}
    assert len(oks) == 2 * len(want)
    assert all(e["rev"] == 1 and e["site"] == want[k] for k, e in oks)
    missing = sorted(r.original[0] for r in errs)
    assert missing == sorted(keys[:20] * 2 + ["dev-999"])
    assert {r.error_type for r in errs} == {"MissingRow"}


def test_table_bad_bytes_go_to_errs(broker, topic_name):
    broker.create_topic(topic_name, partitions=1, config={"cleanup.policy": "compact"})
    produce_all(broker.bootstrap, topic_name, [(b"a", b"{not json"), (b"b", b'{"v": 1}')])
    flow = Dataflow("table_errs")
    table = kafka_table(
        "t", flow, brokers=broker.bootstrap, topic=topic_name, value_serde=JsonSerde(), tail=False
    )
    rows, errs = [], []
    op.output("rows", table.changelog, TestingSink(rows))
    op.output("errs", table.errs, TestingSink(errs))
    run_main(flow)
    assert [r for r in rows if isinstance(r, tuple) and len(r) == 2] == [("b", {"v": 1})]
    assert rows[-1].partitions == 1  # the TableReady marker comes after the rows
    assert len(errs) == 1 and errs[0].original.key == b"a"


def test_bootstrap_reads_a_table_produced_in_large_batches(broker, topic_name):
    """Regression: tansu reports end offsets in record batches; the bootstrap must not stop early."""
    broker.create_topic(topic_name, partitions=1, config={"cleanup.policy": "compact"})
    rows = [(f"acct-{i:05d}".encode(), orjson.dumps({"tier": i % 3})) for i in range(5000)]
    produce_all(broker.bootstrap, topic_name, rows)  # lingers, so thousands of rows per batch

    flow = Dataflow("big_batches")
    table = kafka_table(
        "accounts",
        flow,
        brokers=broker.bootstrap,
        topic=topic_name,
        value_serde=JsonSerde(),
        tail=False,
    )
    got = []
    op.output("rows", table.changelog, TestingSink(got))
    run_main(flow)
    assert len([r for r in got if isinstance(r, tuple) and len(r) == 2]) == 5000
    assert type(got[-1]).__name__ == "TableReady"  # announced after every row


def test_table_is_read_without_librdkafkas_offset_query_wait(broker, topic_name):
    """A fresh reader is assigned offset 0, not OFFSET_BEGINNING, whose offset query waits 500 ms.

    The assignment is the behaviour checked: timing the read would fail on a busy machine.
    """
    broker.create_topic(topic_name, partitions=1, config={"cleanup.policy": "compact"})
    produce_all(broker.bootstrap, topic_name, [(b"k", orjson.dumps({"v": 1}))])
    source = _TableSource([broker.bootstrap], topic_name, {}, tail=False)
    part = source.build_part("t", "0", None)
    try:
        [assigned] = part._consumer.assignment()
        assert assigned.offset == 0
        got = []
        while not any(type(x) is TableReady for x in got):
            got += [x for fetch in part.next_batch() for x in fetch]
        assert [(m.key(), m.offset()) for m in got if type(m) is not TableReady] == [(b"k", 0)]
        assert part.snapshot() == 1
    finally:
        part.close()


def test_decode_keeps_markers_in_order_and_sends_reader_errors_to_errs():
    from confluent_kafka import KafkaError, Message
    from streamml.operators.join.table import _decoder

    from streamml.serde.base import StringSerde

    def msg(key, value, offset):
        return Message(topic="devices", partition=0, offset=offset, key=key, value=value)

    broken = Message(topic="devices", partition=0, error=KafkaError(KafkaError._TRANSPORT))
    ready = TableReady("devices", 0, 1)
    fetches = [
        [msg(b"a", b'{"v": 1}', 0), broken, msg(b"b", b"{oops", 1), ready],
        [msg(b"c", None, 2), msg(None, b"1", 3)],
    ]
    [(rows, errs)] = _decoder("t.decode", "t.read", StringSerde(), JsonSerde())(fetches)
    assert rows == [("a", {"v": 1}), ready, ("c", None)]
    assert [(r.step_id, r.error_type) for r in errs] == [
        ("t.read", "KafkaError"),
        ("t.decode", "DecodeError"),
        ("t.decode", "MissingKey"),
    ]
    assert [(r.original.key, r.original.offset) for r in errs[1:]] == [(b"b", 1), (None, 3)]
