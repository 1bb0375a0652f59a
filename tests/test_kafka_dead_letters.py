"""The dead-letter path never crashes: whatever a rejection holds, one JSON envelope comes out."""

from __future__ import annotations

import base64
import itertools
import math
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from confluent_kafka import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streamml.operators.join.table import _decoder as table_decoder

from streamml.broker import EmbeddedBroker
from streamml.errors import Rejected
from streamml.kafka import dead_letter_envelope, dead_letter_sink
from streamml.kafka._dead_letters import (
    _dead_letter,
    _encode_envelopes,
    _envelope,
    _find_source,
    json_safe,
)
from streamml.kafka._sink import _encoder
from streamml.producer import Messages
from streamml.serde import JsonSerde, StringSerde
from streamml.testing import consume_all

_runs = itertools.count()
FIELDS = ["step_id", "error_type", "reason", "time", "source", "key", "value", "event"]
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


class _Opaque:
    """An object JSON knows nothing of, whose repr works."""

    def __repr__(self) -> str:
        return "<opaque>"


class _BrokenRepr:
    """An object whose repr raises."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)))
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(alphabet=st.characters(blacklist_categories=("Cs",))), inner, max_size=4
        )
    ),
    max_leaves=12,
)
_odd_scalars = (
    st.integers()  # beyond 64 bits too
    | st.floats()  # NaN and infinities
    | st.text()  # lone surrogates too
    | st.binary()
    | st.builds(_Opaque)
    | st.builds(_BrokenRepr)
    | st.datetimes()
)
_hashable = (
    st.none() | st.integers() | st.floats() | st.text() | st.binary() | st.tuples(st.integers())
)
_any_values = st.recursive(
    _odd_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.frozensets(_hashable, max_size=3)
        | st.dictionaries(_hashable, inner, max_size=4)
    ),
    max_leaves=12,
)


def _envelopes(rejections: list[Any]) -> list[dict[str, Any]]:
    out = _encode_envelopes(rejections)
    assert len(out) == len(rejections)  # in = out
    return [orjson.loads(value) for _, value in out]


@given(st.lists(_any_values, max_size=8), _any_values)
def test_any_event_gives_one_envelope_with_every_field(events: list[Any], odd: Any) -> None:
    rejections = [Rejected("step", "Bad", "why", e) for e in events]
    rejections.append(Rejected(odd, odd, odd, odd))  # even the fields themselves may be odd
    for envelope in _envelopes(rejections):
        assert list(envelope) == FIELDS


_times = (
    st.datetimes(timezones=st.sampled_from([None, timezone.utc, timezone(timedelta(hours=-5))]))
    | st.dates()
    | st.times()
)


@given(
    st.lists(
        _any_values | _times | st.dictionaries(st.text(), _times | st.binary(), max_size=3),
        max_size=8,
    ),
    st.binary(),
    _times,
)
def test_the_fast_envelope_writes_the_bytes_json_safe_writes(
    events: list[Any], raw: bytes, when: Any
) -> None:
    """The fast path (plain data, bytes and times written directly) and json_safe agree,
    on any event and on a source frame's row (its kafka_* columns, bytes and a time)."""
    row = {"t": when, "kafka_topic": "t", "kafka_partition": 0, "kafka_offset": 3}
    stamp = NOW.isoformat()
    for event in [*events, {**row, "kafka_key": raw, "kafka_value": raw}]:
        rejected = Rejected("step", "Bad", "why", event)
        slow = orjson.dumps(json_safe(_envelope(rejected, _find_source(event), stamp)))
        assert _dead_letter(rejected, stamp)[1] == slow


@given(st.lists(_json_values, max_size=8))
def test_json_events_come_out_as_they_went_in(events: list[Any]) -> None:
    rejections = [Rejected("step", "Bad", "why", e) for e in events]
    for event, envelope in zip(events, _envelopes(rejections)):
        expected = None if isinstance(event, bytes) else event
        assert envelope["event"] == expected


def test_values_json_cannot_hold_are_described_not_lost() -> None:
    event = {
        1: "int key",
        (2, 3): "tuple key",
        "big": 2**70,
        "small": -(2**64),
        "nan": math.nan,
        "inf": -math.inf,
        "raw": b"\x00\xff",
        "obj": _Opaque(),
        "broken": _BrokenRepr(),
        "surrogate": "\ud800",
    }
    [envelope] = _envelopes([Rejected("s", "E", "r", event)])
    assert envelope["event"] == {
        "1": "int key",
        "(2, 3)": "tuple key",
        "big": {"int": str(2**70)},
        "small": {"int": str(-(2**64))},
        "nan": {"float": "nan"},
        "inf": {"float": "-inf"},
        "raw": {"base64": base64.b64encode(b"\x00\xff").decode()},
        "obj": {"repr": "<opaque>", "type": f"{__name__}._Opaque"},
        "broken": {"repr": "<repr failed: RuntimeError>", "type": f"{__name__}._BrokenRepr"},
        "surrogate": {"repr": "'\\ud800'", "type": "builtins.str"},
    }


def test_a_cycle_or_deep_nesting_is_described() -> None:
    looped: list[Any] = [1]
    looped.append(looped)
    deep: Any = 0
    for _ in range(500):
        deep = [deep]
    cycle, nested = _envelopes([Rejected("s", "E", "r", looped), Rejected("s", "E", "r", deep)])
    assert cycle["event"][0] == 1 and cycle["event"][1]["repr"] == "[1, [...]]"
    assert "repr" in str(nested["event"])


def test_not_even_a_rejection_still_gives_a_dead_letter() -> None:
    [envelope] = _envelopes(["not a Rejected"])  # type: ignore[list-item]
    assert envelope["error_type"] == "MalformedRejection"
    assert envelope["event"] == "not a Rejected"


def test_event_is_null_when_there_is_none() -> None:
    envelope = dead_letter_envelope(Rejected("decode", "DecodeError", "not JSON", b"{oops"), NOW)
    assert list(envelope) == FIELDS and envelope["event"] is None


def test_table_reader_dead_letters_carry_coordinates_key_and_value() -> None:
    msgs = [
        Message(topic="sites", partition=2, offset=7, key=b"s-1", value=b"{oops", timestamp=(1, 5)),
        Message(topic="sites", partition=2, offset=8, key=None, value=b"{}", timestamp=(1, 6)),
    ]
    [(rows, errs)] = table_decoder("t.decode", "t.read", StringSerde(), JsonSerde())([msgs])
    assert rows == []
    bad_value, no_key = (dead_letter_envelope(r, NOW) for r in errs)
    assert bad_value["source"] == {"topic": "sites", "partition": 2, "offset": 7, "timestamp_ms": 5}
    assert base64.b64decode(bad_value["key"]) == b"s-1"
    assert base64.b64decode(bad_value["value"]) == b"{oops"
    assert (no_key["error_type"], no_key["source"]["offset"], no_key["key"]) == (
        "MissingKey",
        8,
        None,
    )
    assert base64.b64decode(no_key["value"]) == b"{}"


@pytest.mark.integration
@settings(max_examples=3, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_any_values, min_size=1, max_size=30))
def test_arbitrary_rejections_through_the_dead_letter_sink(
    broker: EmbeddedBroker, events: list[Any]
) -> None:
    topic = f"dlq-arbitrary-{next(_runs)}"
    broker.create_topic(topic)
    flow = Dataflow("dlq")
    rejections = [Rejected("step", "Bad", "why", e) for e in events]
    errs = op.input("errs", flow, TestingSource(rejections))
    dead_letter_sink("dlq", errs, brokers=broker.bootstrap, topic=topic)
    run_main(flow)
    written = [orjson.loads(m.value) for m in consume_all(broker.bootstrap, topic)]
    assert len(written) == len(events)
    assert all(list(w) == FIELDS for w in written)


@given(st.lists(_any_values, max_size=12), st.sampled_from(["none", "field", "function"]))
def test_the_sink_encodes_or_rejects_every_item_and_never_raises(
    items: list[Any], key: str
) -> None:
    """Arbitrary items through kafka.sink's encode step: each is a message or a Rejected."""
    pick = {"none": None, "field": "user", "function": lambda item: item[0]}[key]
    out = _encoder("out.encode", JsonSerde(), StringSerde(), None, pick)(items)
    rejected = [r for r in out if isinstance(r, Rejected)]
    messages = [m for m in out if type(m) is Messages]
    assert len(rejected) + sum(map(len, messages)) == len(items) and len(messages) <= 1
    for r in rejected:
        assert r.step_id == "out.encode" and any(r.original is item for item in items)
    for m in messages:
        assert all(isinstance(value, bytes) for value in m.values)
        assert all(raw_key is None or isinstance(raw_key, bytes) for raw_key in m.keys)
    [envelope] = _envelopes(
        [r for r in out if isinstance(r, Rejected)][:1] or [Rejected("s", "E", "r", None)]
    )
    assert list(envelope) == FIELDS
