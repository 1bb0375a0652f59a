"""kafka.source's decode and kafka.sink's encode, batch at a time, against one message at a time.

The batch functions take their fast path (every step a ``map`` in C) when a
batch holds no error, and fall back otherwise; both must give exactly what
decoding or encoding each message on its own gives. No broker needed:
``confluent_kafka.Message`` objects are built directly.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

import orjson
from confluent_kafka import KafkaError, Message
from hypothesis import given
from hypothesis import strategies as st

from streamml._kafka_partitions import picklable
from streamml.errors import Rejected
from streamml.kafka import Record
from streamml.kafka._sink import _encoder
from streamml.kafka._source import _decoder
from streamml.producer import Messages
from streamml.serde import BytesSerde, JsonSerde, SerdeError, StringSerde

_payload = st.one_of(
    st.none(),
    st.sampled_from([b'{"t": 1.5}', b"[1, 2]", b'"x"', b"{broken", b"\xff", b"pump-1"]),
    st.builds(lambda n: orjson.dumps({"n": n}), st.integers(0, 10**6)),
)


@st.composite
def _messages(draw: Any) -> list[Message]:
    msgs = []
    for offset in range(draw(st.integers(0, 12))):
        if draw(st.integers(0, 9)) == 0:  # a consumer error
            msgs.append(Message(topic="t", partition=0, error=KafkaError(KafkaError._TRANSPORT)))
            continue
        msgs.append(
            Message(
                topic=draw(st.sampled_from(["t", "u"])),
                partition=draw(st.integers(0, 3)),
                offset=offset,
                key=draw(_payload),
                value=draw(_payload),
                timestamp=(draw(st.sampled_from([0, 1, 2])), draw(st.integers(0, 2**42))),
            )
        )
    return msgs


def _decode_one_by_one(msgs: list[Message], value_serde: Any, key_serde: Any) -> list[Any]:
    """The reference: consumer errors first, then each message decoded on its own."""
    out: list[Any] = [
        Rejected("in.kafka", "KafkaError", str(m.error()), picklable(m))
        for m in msgs
        if m.error() is not None
    ]
    for m in msgs:
        if m.error() is not None:
            continue
        (value,) = value_serde.decode_batch([m.value()])
        (key,) = key_serde.decode_batch([m.key()])
        if type(value) is SerdeError:
            out.append(Rejected("in.decode", value.kind, f"value: {value}", picklable(m)))
        elif type(key) is SerdeError:
            out.append(Rejected("in.decode", key.kind, f"key: {key}", picklable(m)))
        else:
            kind, ms = m.timestamp()
            out.append(
                Record(
                    value,
                    key,
                    m.topic(),
                    m.partition(),
                    m.offset(),
                    ms if kind else None,
                    m.key(),
                    m.value(),
                )
            )
    return out


@given(_messages(), st.sampled_from(["bytes", "string"]))
def test_decode_batch_equals_one_message_at_a_time(msgs: list[Message], keys: str) -> None:
    key_serde = BytesSerde() if keys == "bytes" else StringSerde()
    decode = _decoder("in.decode", "in.kafka", JsonSerde(), key_serde)
    got = decode(msgs)
    assert got == _decode_one_by_one(msgs, JsonSerde(), key_serde)
    assert [type(x) for x in got] == [
        type(x) for x in _decode_one_by_one(msgs, JsonSerde(), key_serde)
    ]


def test_decode_of_clean_batch_gives_records_with_broker_timestamps() -> None:
    msgs = [
        Message(topic="t", partition=1, offset=7, key=b"k", value=b'{"a": 1}', timestamp=(1, 99)),
        Message(topic="t", partition=1, offset=8, key=None, value=b"2", timestamp=(0, 0)),
    ]
    assert _decoder("s", "k", JsonSerde(), BytesSerde())(msgs) == [
        Record({"a": 1}, b"k", "t", 1, 7, 99, b"k", b'{"a": 1}'),
        Record(2, None, "t", 1, 8, None, None, b"2"),
    ]


class _Unencodable:
    def __repr__(self) -> str:
        return "<unencodable>"


_item = st.tuples(
    st.one_of(st.text(max_size=3), st.none(), st.integers(0, 9)),
    st.one_of(
        st.none(),
        st.dictionaries(st.text(max_size=2), st.integers(-5, 5), max_size=2),
        st.builds(_Unencodable),
    ),
)


def _encode_one_by_one(items: list[Any], value: Any, key: Any) -> list[Any]:
    """The reference: each item picked, encoded and checked on its own."""
    value_serde, key_serde = JsonSerde(), StringSerde()
    out: list[Any] = []
    for item in items:
        try:
            picked = value(item) if value is not None else item
        except Exception as exc:  # noqa: BLE001
            picked = SerdeError("BadItem", f"{type(exc).__name__}: {exc}")
        (raw_value,) = value_serde.encode_batch([picked])
        raw_key = k = None
        if key is not None:
            try:
                k = key(item)
            except Exception as exc:  # noqa: BLE001
                k = SerdeError("BadItem", f"{type(exc).__name__}: {exc}")
            (raw_key,) = key_serde.encode_batch([k])
        if type(raw_value) is SerdeError or type(picked) is SerdeError:
            err = raw_value if type(raw_value) is SerdeError else picked
            out.append(Rejected("out.encode", err.kind, f"value: {err}", item))
        elif type(k) is SerdeError:  # the key getter raised: never produce its error text as a key
            out.append(Rejected("out.encode", k.kind, f"key: {k}", item))
        elif type(raw_key) is SerdeError:
            out.append(Rejected("out.encode", raw_key.kind, f"key: {raw_key}", item))
        else:
            out.append((raw_key, raw_value))
    return out


def _second_or_fail(kv: tuple[Any, Any]) -> Any:
    if kv[0] == 0:
        raise LookupError("no value for key 0")
    return kv[1]


def _first_or_fail(kv: tuple[Any, Any]) -> Any:
    if kv[0] == 1:
        raise LookupError("no key for 1")
    return kv[0]


@given(
    st.lists(_item, max_size=12),
    st.sampled_from(["itemgetter", "function", "failing", "none"]),
    st.sampled_from(["itemgetter", "failing", "none"]),
)
def test_encode_batch_equals_one_item_at_a_time(items: list[Any], value: str, keyed: str) -> None:
    pick_value = {
        "itemgetter": itemgetter(1),
        "function": lambda kv: kv[1],
        "failing": _second_or_fail,
        "none": None,
    }[value]
    pick_key = {"itemgetter": itemgetter(0), "failing": _first_or_fail, "none": None}[keyed]
    encode = _encoder("out.encode", JsonSerde(), StringSerde(), pick_value, pick_key)
    got = encode(items)
    want = _encode_one_by_one(items, pick_value, pick_key)
    # the messages of a batch come as one Messages item, in order; the rejections after it
    assert all(type(x) in (Messages, Rejected) for x in got)
    assert all(len(x) for x in got if type(x) is Messages)
    pairs = [kv for x in got if type(x) is Messages for kv in zip(x.keys, x.values)]
    assert pairs == [x for x in want if type(x) is tuple]
    assert [x for x in got if type(x) is Rejected] == [x for x in want if type(x) is Rejected]


def test_a_key_getter_that_raises_rejects_the_item_instead_of_producing_its_error() -> None:
    encode = _encoder("out.encode", JsonSerde(), StringSerde(), itemgetter(1), _first_or_fail)
    ok, bad = encode([("a", {"x": 1}), (1, {"x": 2})])
    assert (ok.keys, ok.values) == ([b"a"], [b'{"x":1}'])
    assert isinstance(bad, Rejected) and bad.reason == "key: LookupError: no key for 1"
