"""The NumPy batch decoder for flat Avro records gives exactly what fastavro gives per record.

The reference is the per-record path as it was before the batch decoder (the
same code, copied here), so every comparison is against fastavro itself:
values, their types (int vs float, bool, aware datetimes), and for a bad
payload the same SerdeError kind and message.
"""

from __future__ import annotations

import io
import itertools
import math
import re
import struct
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from fastavro import parse_schema, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamml.serde import AvroSerde, ConfluentAvroSerde, SerdeError, avro
from streamml.serde._avro_flat import flat_reader, join_payloads
from streamml.serde.avro import _describe, _Wrapped
from streamml.serde.base import map_each


@pytest.fixture(autouse=True, scope="module")
def _batch_path_for_every_batch() -> Iterator[None]:
    """The small batches drawn here take the batch path too (by default only 32 and more do)."""
    saved, avro._FLAT_MIN_BATCH = avro._FLAT_MIN_BATCH, 1
    yield
    avro._FLAT_MIN_BATCH = saved


INT64 = (-(2**63), 2**63 - 1)
MILLIS_OK = (-62_135_596_800_000, 253_402_300_799_999)
MICROS_OK = (MILLIS_OK[0] * 1000, MILLIS_OK[1] * 1000 + 999)

_TYPES: dict[str, Any] = {
    "boolean": "boolean",
    "int": "int",
    "long": "long",
    "float": "float",
    "double": "double",
    "string": "string",
    "bytes": "bytes",
    "timestamp-millis": {"type": "long", "logicalType": "timestamp-millis"},
    "timestamp-micros": {"type": "long", "logicalType": "timestamp-micros"},
    "string-dict": {"type": "string"},  # a primitive written as {"type": ...}
}


def _edge_ints(low: int, high: int) -> st.SearchStrategy[int]:
    edges = [low, low + 1, -1, 0, 1, high - 1, high, -(2**55), 2**55, -(2**62), 2**62]
    return st.one_of(
        st.sampled_from([e for e in edges if low <= e <= high]), st.integers(low, high)
    )


def _timestamps(ok: tuple[int, int]) -> st.SearchStrategy[int]:
    # Mostly in datetime's range; sometimes beyond it, where fastavro raises OverflowError.
    return st.one_of(_edge_ints(*ok), _edge_ints(*ok), _edge_ints(*INT64))


# NUL (the batch decoder's separator), and 1- to 4-byte UTF-8 characters, often.
_CHARS = st.one_of(
    st.sampled_from(["\x00", "a", "\xe9", "\u20ac", "\U0001d11e"]), st.characters(codec="utf-8")
)

_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "boolean": st.booleans(),
    "int": _edge_ints(-(2**31), 2**31 - 1),
    "long": _edge_ints(*INT64),
    "float": st.floats(width=32),
    "double": st.one_of(st.floats(), st.sampled_from([-0.0, math.nan, -math.inf, 5e-324])),
    "string": st.text(_CHARS, max_size=12),  # non-ASCII, NUL and empty strings included
    "bytes": st.binary(max_size=12),
    "timestamp-millis": _timestamps(MILLIS_OK),
    "timestamp-micros": _timestamps(MICROS_OK),
    "string-dict": st.text(max_size=4),
}

_kinds = st.lists(st.sampled_from(sorted(_TYPES)), max_size=6)


def _schema(kinds: list[str]) -> dict[str, Any]:
    fields = [
        {"name": f"f{i}_{k.replace('-', '_')}", "type": _TYPES[k]} for i, k in enumerate(kinds)
    ]
    return {"type": "record", "name": "Flat", "fields": fields}


@st.composite
def _batches(draw: st.DrawFn, max_records: int = 12) -> tuple[dict[str, Any], list[bytes]]:
    """A random flat schema and a batch of bodies written by fastavro."""
    kinds = draw(_kinds)
    schema = _schema(kinds)
    parsed = parse_schema(schema)
    rows = draw(st.lists(st.tuples(*(_VALUES[k] for k in kinds)), min_size=1, max_size=max_records))
    bodies = []
    for row in rows:
        buf = io.BytesIO()
        schemaless_writer(buf, parsed, {f["name"]: v for f, v in zip(schema["fields"], row)})
        bodies.append(buf.getvalue())
    return schema, bodies


def _per_record_avro(serde: AvroSerde, payloads: list[Any]) -> list[Any]:
    """``AvroSerde.decode_batch`` as it was before the batch decoder."""
    return map_each(
        lambda p: None if p is None else serde._decode_one(p), payloads, "DecodeError", _describe
    )


def _per_record_confluent(serde: ConfluentAvroSerde, payloads: list[Any]) -> list[Any]:
    """``ConfluentAvroSerde.decode_batch`` as it was before the batch decoder."""
    return [
        item if type(item) is not _Wrapped else item.error
        for item in map_each(serde._decode_guarded, payloads, "DecodeError", _describe)
    ]


def _same_value(got: Any, want: Any) -> None:
    assert type(got) is type(want), (got, want)
    if isinstance(want, float):  # bit for bit: NaN payloads, -0.0
        assert struct.pack("<d", got) == struct.pack("<d", want), (got, want)
    elif isinstance(want, datetime):
        assert got == want and got.tzinfo is want.tzinfo, (got, want)
    else:
        assert got == want, (got, want)


def _message(error: SerdeError) -> str:
    """The message without object addresses (fastavro names its BytesIO: ``at 0x7f...``)."""
    return re.sub(r" at 0x[0-9a-f]+", " at 0x...", str(error))


def _same(got: list[Any], want: list[Any]) -> None:
    """Equal item by item: dicts key by key in order, SerdeErrors by kind and message."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if type(w) is SerdeError:
            assert type(g) is SerdeError and (g.kind, _message(g)) == (w.kind, _message(w))
        elif type(w) is dict:
            assert type(g) is dict and list(g) == list(w)
            for key in w:
                _same_value(g[key], w[key])
        else:
            assert g is None and w is None


def _all_ok(values: list[Any]) -> bool:
    return not any(type(v) is SerdeError for v in values)


@given(_batches())
def test_flat_reader_equals_fastavro_per_record(batch: tuple[dict[str, Any], list[bytes]]) -> None:
    schema, bodies = batch
    serde = AvroSerde(schema)
    want = _per_record_avro(serde, bodies)
    reader = flat_reader(parse_schema(schema))
    assert reader is not None
    got = reader.read(join_payloads(bodies), 0)
    if _all_ok(want):
        assert got is not None  # the batch path decoded it itself, not by falling back
        _same(got, want)
    else:
        assert got is None  # e.g. a timestamp beyond datetime: the per-record path reports it
    _same(serde.decode_batch(bodies), want)


def _same_rows(frame: Any, want: list[Any]) -> None:
    """A decoded frame's rows equal fastavro's dicts: names in order, values and Python types."""
    rows = frame.to_dicts()
    assert len(rows) == len(want)
    for g, w in zip(rows, want):
        assert list(g) == list(w)
        for key, value in w.items():
            if isinstance(value, float) and math.isnan(value):
                assert isinstance(g[key], float) and math.isnan(g[key])
            else:
                assert type(g[key]) is type(value) and g[key] == value, (key, g[key], value)


@given(_batches())
def test_flat_frame_equals_fastavro_per_record(batch: tuple[dict[str, Any], list[bytes]]) -> None:
    schema, bodies = batch
    want = _per_record_avro(AvroSerde(schema), bodies)
    reader = flat_reader(parse_schema(schema))
    assert reader is not None
    frame = reader.read_frame(join_payloads(bodies), 0)
    if _all_ok(want):
        assert frame is not None
        _same_rows(frame, want)
    else:
        assert frame is None


STRINGS_AROUND_A_LONG = {
    "type": "record",
    "name": "S",
    "fields": [
        {"name": "a", "type": "string"},
        {"name": "n", "type": "long"},
        {"name": "b", "type": "string"},
    ],
}


@given(
    st.sampled_from([(0, 12), (28, 90)]).flatmap(
        lambda size: st.lists(
            st.tuples(
                st.text(_CHARS, min_size=size[0], max_size=size[1]),
                _edge_ints(*INT64),
                st.text(_CHARS, min_size=size[0], max_size=size[1]),
            ),
            min_size=1,
            max_size=12,
        )
    )
)
def test_short_and_long_strings_make_the_same_frame_as_fastavro(
    rows: list[tuple[str, int, str]],
) -> None:
    """Both ways a String column is built (one decode of short strings; a slice each of long
    ones, or of strings holding NUL) give fastavro's strings, next to a varint of any size."""
    serde = AvroSerde(STRINGS_AROUND_A_LONG)
    bodies = serde.encode_batch([{"a": a, "n": n, "b": b} for a, n, b in rows])
    reader = flat_reader(parse_schema(STRINGS_AROUND_A_LONG))
    assert reader is not None
    frame = reader.read_frame(join_payloads(bodies), 0)
    assert frame is not None
    _same_rows(frame, _per_record_avro(serde, bodies))


@pytest.mark.parametrize("size", [1, 40])
def test_invalid_utf8_in_a_frame_is_one_payloads_error(size: int) -> None:
    """Short or long, a string that is not UTF-8 is that payload's DecodeError, the rest rows."""
    schema = {"type": "record", "name": "R", "fields": [{"name": "s", "type": "string"}]}
    serde = AvroSerde(schema)
    good = serde.encode_batch([{"s": "é" * size}, {"s": "x" * size}])
    bad = _varint(size + 1) + b"\xc3(" + b"y" * (size - 1)
    out = serde.decode_frame([good[0], bad, good[1]])
    assert out.frame["s"].to_list() == ["é" * size, "x" * size]
    assert out.rows.tolist() == [0, 2]
    assert [(i, e.kind) for i, e in out.errors] == [(1, "DecodeError")]


@st.composite
def _corruptions(draw: st.DrawFn) -> tuple[dict[str, Any], list[bytes]]:
    """A valid batch with some bodies truncated, extended, overwritten or given a flipped byte."""
    schema, bodies = draw(_batches())
    out = list(bodies)
    for i in draw(st.lists(st.integers(0, len(out) - 1), min_size=1, max_size=3)):
        body = out[i]
        how = draw(st.sampled_from(["truncate", "extend", "random", "flip", "splice"]))
        if how == "truncate":
            out[i] = body[: draw(st.integers(0, max(len(body) - 1, 0)))]
        elif how == "extend":
            out[i] = body + draw(st.binary(min_size=1, max_size=4))
        elif how == "random":
            out[i] = draw(st.binary(max_size=2 * len(body) + 2))
        elif how == "flip" and body:  # e.g. a string's length varint, or its continuation bit
            at = draw(st.integers(0, len(body) - 1))
            bit = draw(st.sampled_from([0x01, 0x02, 0x40, 0x80]))
            out[i] = body[:at] + bytes([body[at] ^ bit]) + body[at + 1 :]
        elif how == "splice":  # long varints and overlong sizes: 0x80-0xff runs, then a byte
            run = draw(st.binary(min_size=1, max_size=11).map(lambda b: bytes(x | 0x80 for x in b)))
            at = draw(st.integers(0, len(body)))
            out[i] = body[:at] + run + draw(st.binary(min_size=1, max_size=2)) + body[at:]
    return schema, out


@given(_corruptions())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_corrupt_batches_give_the_per_record_results(
    batch: tuple[dict[str, Any], list[bytes]],
) -> None:
    schema, bodies = batch
    serde = AvroSerde(schema)
    want = _per_record_avro(serde, bodies)
    _same(serde.decode_batch(bodies), want)
    _same_frame(serde.decode_frame(bodies), want)


def _same_frame(out: Any, want: list[Any]) -> None:
    """A decode_frame result holds the per-record path's dicts as rows, its SerdeErrors as errors.

    One more error is right: a value that does not fit its column (an ``int``
    beyond Int32, which fastavro reads as it reads a long) is a SchemaMismatch.
    """
    misfit = {i for i, e in out.errors if e.kind == "SchemaMismatch" and type(want[i]) is dict}
    for i in misfit:
        assert any(type(v) is int and not -(2**31) <= v < 2**31 for v in want[i].values())
    assert out.rows.tolist() == [
        i for i, w in enumerate(want) if type(w) is dict and i not in misfit
    ]
    _same_rows(out.frame, [want[i] for i in out.rows.tolist()])
    assert [i for i, _ in out.errors] == [
        i for i, w in enumerate(want) if type(w) is not dict or i in misfit
    ]
    for i, err in out.errors:
        if want[i] is None:  # a tombstone has no columns: an error in a frame
            assert err.kind == "Tombstone"
        elif i not in misfit:
            _same([err], [want[i]])


def test_a_corrupt_body_leaves_the_others_to_the_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the bodies that do not read as records are decoded one by one (by fastavro)."""
    serde = AvroSerde(STRINGS_AROUND_A_LONG)
    bodies = serde.encode_batch([{"a": f"a{i}", "n": i, "b": "é" * i} for i in range(40)])
    bodies[3] = bodies[3][:-1]  # truncated
    bodies[17] = bodies[17] + b"\x00"  # a byte too many
    bodies[30] = _varint(-3) + bodies[30][1:]  # a negative size
    bodies[31] = b"\x06\xff" + bodies[31][2:]  # "a31" made "\xff31": not UTF-8
    one_by_one: list[int] = []
    decode_each = serde._decode_each
    monkeypatch.setattr(
        serde, "_decode_each", lambda ps: one_by_one.append(len(ps)) or decode_each(ps)
    )
    want = _per_record_avro(serde, bodies)
    out = serde.decode_frame(bodies)
    _same_frame(out, want)
    assert [i for i, _ in out.errors] == [3, 17, 30, 31]
    assert sum(one_by_one) == 4
    one_by_one.clear()
    _same(serde.decode_batch(bodies), want)  # as dicts, a string not UTF-8 sends all one by one
    assert one_by_one == [40]
    bodies[31] = want_31 = serde.encode_batch([{"a": "", "n": 0, "b": ""}])[0]
    one_by_one.clear()
    _same(serde.decode_batch(bodies), _per_record_avro(serde, bodies))
    assert one_by_one == [3] and serde.decode_batch([want_31]) == [{"a": "", "n": 0, "b": ""}]


_REGISTRY_URLS = (f"mock://avro-flat-{i}" for i in itertools.count())


@given(_corruptions(), st.data())
@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=50)
def test_confluent_batches_give_the_per_record_results(
    batch: tuple[dict[str, Any], list[bytes]], data: st.DataObject
) -> None:
    schema, bodies = batch
    registry = SchemaRegistryClient.new_client({"url": next(_REGISTRY_URLS)})
    writer = ConfluentAvroSerde(registry, schema=schema, subject="flat-value")
    header = struct.pack(">bI", 0, writer.schema_id)
    payloads: list[Any] = [header + b for b in bodies]
    if data.draw(st.booleans()):  # and some wire-format trouble, sometimes
        i = data.draw(st.integers(0, len(payloads) - 1))
        payloads[i] = data.draw(
            st.sampled_from(
                [
                    None,
                    b"\x00\x00\x00",  # shorter than the header
                    b"\x01" + payloads[i][1:],  # wrong magic byte
                    struct.pack(">bI", 0, 999) + bodies[i],  # an id the registry does not know
                    payloads[i][:5],  # a header and no body
                ]
            )
        )
    reader = ConfluentAvroSerde(registry)
    want = _per_record_confluent(ConfluentAvroSerde(registry), payloads)
    _same(reader.decode_batch(payloads), want)
    _same_frame(reader.decode_frame(payloads), want)


@given(_batches())
@settings(max_examples=30)
def test_confluent_clean_batches_take_the_batch_path(
    batch: tuple[dict[str, Any], list[bytes]],
) -> None:
    schema, bodies = batch
    registry = SchemaRegistryClient.new_client({"url": next(_REGISTRY_URLS)})
    writer = ConfluentAvroSerde(registry, schema=schema, subject="flat-value")
    payloads = [struct.pack(">bI", 0, writer.schema_id) + b for b in bodies]
    want = _per_record_confluent(ConfluentAvroSerde(registry), payloads)
    got, singles = _decoded_one_by_one(ConfluentAvroSerde(registry), payloads)
    assert singles == sum(type(w) is not dict for w in want)  # only the bodies that do not read
    _same(got, want)


def _decoded_one_by_one(serde: Any, payloads: list[Any]) -> tuple[list[Any], int]:
    """``serde.decode_batch(payloads)``, and how many payloads it decoded one by one."""
    counted: list[int] = []
    each = serde._decode_each
    serde._decode_each = lambda ps: counted.append(len(ps)) or each(ps)
    try:
        return serde.decode_batch(payloads), sum(counted)
    finally:
        del serde._decode_each


def _varint(n: int) -> bytes:
    """Zigzag varint of a 64-bit signed int, as Avro writes it."""
    n = ((n << 1) ^ (n >> 63)) & (2**64 - 1)
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes([*out, n])


LONG = {"type": "record", "name": "L", "fields": [{"name": "n", "type": "long"}]}


@pytest.mark.parametrize(
    "body",
    [
        _varint(2**63 - 1),  # 10 bytes, 10th byte 0x01
        _varint(-(2**63)),
        _varint(2**62),  # 9 bytes
        b"\x80\x00",  # an overlong 0: fastavro accepts it
        b"\xff" * 9 + b"\x01",  # 10 bytes, every bit set: -2**63
        b"\xff" * 9 + b"\x00",  # 10th byte 0
        b"\xff" * 9 + b"\x02",  # bits past the 64th: fastavro wraps them, we defer to it
        b"\xff" * 9 + b"\x81\x00",  # 11 bytes
        b"\xff" * 10,  # no end in sight
        b"\x80" * 9,  # runs out
    ],
)
def test_varint_limits_match_fastavro(body: bytes) -> None:
    serde = AvroSerde(LONG)
    batch = [_varint(5), body, _varint(-5)]
    _same(serde.decode_batch(batch), _per_record_avro(serde, batch))
    _same(serde.decode_batch([body]), _per_record_avro(serde, [body]))


def test_sensor_readings_take_the_batch_path() -> None:
    """The example's schema (string, timestamp-millis, 3 doubles) is a flat record."""
    from examples.sensor_anomaly.flow import SCHEMA
    from examples.sensor_anomaly.generate import generate_fleet

    registry = SchemaRegistryClient.new_client({"url": next(_REGISTRY_URLS)})
    serde = ConfluentAvroSerde(registry, schema=SCHEMA, subject="readings-value")
    payloads = serde.encode_batch(generate_fleet(300, n_sensors=5).events)
    got, singles = _decoded_one_by_one(serde, payloads)
    assert singles == 0
    _same(got, _per_record_confluent(serde, payloads))
    assert type(got[0]["ts"]) is datetime and got[0]["ts"].tzinfo is not None


@pytest.mark.parametrize(
    "field_type",
    [
        ["null", "string"],
        {"type": "array", "items": "long"},
        {"type": "map", "values": "long"},
        {"type": "enum", "name": "E", "symbols": ["A"]},
        {"type": "fixed", "name": "F", "size": 2},
        {"type": "record", "name": "In", "fields": [{"name": "x", "type": "long"}]},
        {"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2},
        {"type": "string", "logicalType": "uuid"},
        {"type": "int", "logicalType": "date"},
        {"type": "long", "logicalType": "local-timestamp-millis"},
        {"type": "long", "logicalType": "time-micros"},
        "null",
    ],
)
def test_anything_but_flat_fields_is_left_to_fastavro(field_type: Any) -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "x", "type": field_type}]}
    assert flat_reader(parse_schema(schema)) is None


def test_reader_schema_is_left_to_fastavro() -> None:
    writer = {"type": "record", "name": "R", "fields": [{"name": "x", "type": "int"}]}
    reader = {"type": "record", "name": "R", "fields": [{"name": "x", "type": "double"}]}
    serde = AvroSerde(writer, reader_schema=reader)
    [payload] = AvroSerde(writer).encode_batch([{"x": 3}])
    value = serde.decode_batch([payload])[0]["x"]
    assert type(value) is float and value == 3.0


def test_invalid_utf8_is_one_payloads_error() -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "s", "type": "string"}]}
    serde = AvroSerde(schema)
    batch = [b"\x02a", b"\x04\xc3(", b"\x02\x00", b"\x02b"]
    got = serde.decode_batch(batch)
    assert got[0] == {"s": "a"} and got[2] == {"s": "\x00"} and type(got[1]) is SerdeError
    _same(got, _per_record_avro(serde, batch))


@pytest.mark.parametrize("byte", [0, 1, 2, 0x80, 0xFF])
def test_any_nonzero_boolean_byte_is_true_as_in_fastavro(byte: int) -> None:
    schema = {"type": "record", "name": "B", "fields": [{"name": "b", "type": "boolean"}]}
    serde = AvroSerde(schema)
    batch = [b"\x01", bytes([byte]), b"\x00"]
    got = serde.decode_batch(batch)
    assert got[1] == {"b": byte != 0}
    _same(got, _per_record_avro(serde, batch))


@pytest.mark.parametrize(
    ("logical", "edges"), [("timestamp-millis", MILLIS_OK), ("timestamp-micros", MICROS_OK)]
)
@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_timestamps_at_the_ends_of_datetime_match_fastavro(
    logical: str, edges: tuple[int, int], delta: int
) -> None:
    """One past either end fastavro raises OverflowError, one SerdeError for that payload."""
    schema = {"type": "record", "name": "T", "fields": [{"name": "t", "type": _TYPES[logical]}]}
    serde = AvroSerde(schema)
    batch = [_varint(0), _varint(edges[0] + delta), _varint(edges[1] + delta), _varint(-1)]
    got = serde.decode_batch(batch)
    assert _all_ok(got) == (delta == 0)
    _same(got, _per_record_avro(serde, batch))


@pytest.mark.parametrize("kind", ["bytes", "string"])
@pytest.mark.parametrize("size", [-1, -2, 9])
def test_negative_and_overlong_sizes_match_fastavro(kind: str, size: int) -> None:
    """fastavro reads a negative size to the end of the body, an overlong one as far as it goes."""
    fields = [{"name": "b", "type": kind}, {"name": "d", "type": "double"}]
    serde = AvroSerde({"type": "record", "name": "S", "fields": fields})
    good = _varint(1) + b"a" + struct.pack("<d", 1.5)
    batch = [good, _varint(size) + b"abcdefg", _varint(size) + b"abcdefgh", good]
    _same(serde.decode_batch(batch), _per_record_avro(serde, batch))
    last = AvroSerde({"type": "record", "name": "S", "fields": fields[::-1]})
    batch = [struct.pack("<d", 1.5) + _varint(size) + b"abc", struct.pack("<d", 2.5) + b"\x02a"]
    _same(last.decode_batch(batch), _per_record_avro(last, batch))


def test_strings_holding_nul_bytes_decode_as_in_fastavro() -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "s", "type": "string"}]}
    serde = AvroSerde(schema)
    texts = ["a\x00b", "\x00", "", "x\x00", "\u20ac"]
    batch = serde.encode_batch([{"s": t} for t in texts])
    assert serde.decode_batch(batch) == [{"s": t} for t in texts]
    _same(serde.decode_batch(batch), _per_record_avro(serde, batch))


def test_only_batches_of_32_and_more_take_the_batch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(avro, "_FLAT_MIN_BATCH", 32)
    schema = {"type": "record", "name": "R", "fields": [{"name": "n", "type": "long"}]}
    serde = AvroSerde(schema)
    reads: list[int] = []
    reader = serde._flat
    assert reader is not None

    class Spy:
        def read_where(self, joined: Any, skip: int) -> Any:
            reads.append(len(joined.ends))
            return reader.read_where(joined, skip)

    monkeypatch.setattr(serde, "_flat", Spy())
    for n in (31, 32):
        payloads = serde.encode_batch([{"n": i} for i in range(n)])
        assert serde.decode_batch(payloads) == [{"n": i} for i in range(n)]
    assert reads == [32]


def test_a_short_last_payload_is_not_read_past_the_buffer() -> None:
    """Each field stops the batch path once a record has overrun its payload."""
    fields = [{"name": f"d{i}", "type": "double"} for i in range(4)]
    serde = AvroSerde({"type": "record", "name": "D", "fields": fields})
    [good] = serde.encode_batch([{f"d{i}": float(i) for i in range(4)}])
    for batch in ([good, b""], [good, good[:3]], [b"", b""]):
        _same(serde.decode_batch(batch), _per_record_avro(serde, batch))


def test_a_batch_of_one_byte_varints_matches_fastavro() -> None:
    """Every one-byte varint (-64 to 63), and a batch with one two-byte varint among them."""
    serde = AvroSerde(LONG)
    values = list(range(-64, 64))
    for batch_values in (values, [*values, 64]):
        batch = [_varint(v) for v in batch_values]
        got = serde.decode_batch(batch)
        assert [r["n"] for r in got] == batch_values
        _same(got, _per_record_avro(serde, batch))
        assert serde.decode_frame(batch).frame["n"].to_list() == batch_values


def test_varints_of_every_size_decode_without_numpy_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyproject allows numpy>=1.24, which has no ``np.bitwise_count``: the batch path must not need it.

    (Run against NumPy 1.24.4 itself, the serde tests pass too: ``pip install
    --target DIR numpy==1.24.4`` and ``PYTHONPATH=DIR``.)
    """
    import numpy as np

    monkeypatch.delattr(np, "bitwise_count", raising=False)
    serde = AvroSerde(LONG)
    values = [v for k in range(64) for v in (2**k - 1, -(2**k))]  # varints of 1 to 10 bytes
    batch = [_varint(v) for v in values]
    got = serde.decode_batch(batch)
    assert [r["n"] for r in got] == values
    _same(got, _per_record_avro(serde, batch))
