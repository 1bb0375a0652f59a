"""decode_frame / encode_frame: the columnar batch path of every serde.

Each decoder is checked against its own ``decode_batch``: the rows of the
frame are the records ``decode_batch`` gives, every payload is either a row
or an error (never both, never raised), and the error kinds say why.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone

import numpy as np
import orjson
import polars as pl
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from hypothesis import given, settings
from hypothesis import strategies as st

from streamml.serde import (
    AvroSerde,
    BytesSerde,
    ConfluentAvroSerde,
    FrameDecoded,
    JsonSerde,
    SerdeError,
    StringSerde,
    decode_frame,
    encode_frame,
)

READING = {
    "type": "record",
    "name": "Reading",
    "fields": [
        {"name": "sensor_id", "type": "string"},
        {"name": "ts", "type": "long"},
        {"name": "temperature", "type": "double"},
        {"name": "vibration", "type": "double"},
        {"name": "pressure", "type": "double"},
    ],
}
NESTED = {
    "type": "record",
    "name": "Nested",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "score", "type": ["null", "double"]},
    ],
}


def readings(n: int) -> list[dict]:
    return [
        {
            "sensor_id": f"sensor-{i % 100:04d}",
            "ts": 1_767_225_600_000 + i,
            "temperature": 60.0 + i % 7,
            "vibration": 2.0 + (i % 5) / 10,
            "pressure": 5.0 - (i % 3) / 100,
        }
        for i in range(n)
    ]


def confluent(schema: dict = READING, name: str = "frames") -> ConfluentAvroSerde:
    registry = SchemaRegistryClient.new_client({"url": f"mock://{name}"})
    return ConfluentAvroSerde(registry, schema=schema, subject=f"{name}-value")


def assert_partition(out: FrameDecoded, n: int) -> None:
    """Every input index is a row or an error, exactly once, both in input order."""
    assert isinstance(out.frame, pl.DataFrame)
    assert out.rows.dtype == np.int64
    assert len(out.frame) == len(out.rows)
    assert len(out.frame) + len(out.errors) == n
    bad = [i for i, _ in out.errors]
    assert all(isinstance(err, SerdeError) for _, err in out.errors)
    assert sorted(out.rows.tolist() + bad) == list(range(n))
    assert out.rows.tolist() == sorted(out.rows.tolist())
    assert bad == sorted(bad)


def assert_rows_match_batch(out: FrameDecoded, values: list) -> None:
    """The frame's rows are the dicts decode_batch gave (a missing key reads as null)."""
    for row, i in zip(out.frame.iter_rows(named=True), out.rows.tolist()):
        expected = values[i]
        assert isinstance(expected, dict), (i, expected)
        assert set(expected) <= set(row)
        assert row == {k: expected.get(k) for k in row}, (i, row, expected)


# ---------------------------------------------------------------- JSON


def test_json_round_trip_of_readings() -> None:
    serde = JsonSerde()
    rows = readings(50)
    payloads = serde.encode_batch(rows)
    out = serde.decode_frame(payloads)
    assert out.errors == [] and out.rows.tolist() == list(range(50))
    assert out.frame.to_dicts() == rows
    assert out.frame.schema == pl.Schema(
        {
            "sensor_id": pl.String,
            "ts": pl.Int64,
            "temperature": pl.Float64,
            "vibration": pl.Float64,
            "pressure": pl.Float64,
        }
    )
    assert serde.encode_frame(out.frame) == payloads  # orjson's bytes, exactly, for these


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b"\x00\xff garbage", "DecodeError"),
        (b'{"sensor_id": "s", "ts": 17', "DecodeError"),  # truncated
        (b"", "DecodeError"),
        (None, "Tombstone"),
        (b"[1, 2, 3]", "NotARecord"),
        (b"null", "NotARecord"),
        (b'"text"', "NotARecord"),
        (b'{"a": NaN}', "DecodeError"),
        (b'{"a": 1}{"a": 2}', "DecodeError"),
        (b'{"a": "\\ud800"}', "DecodeError"),  # a lone surrogate: polars alone would read "\x00"
        (b'{"a": "x\ty"}', "DecodeError"),  # a raw control character in a string
    ],
)
def test_json_malformed_payload_is_an_error_and_keeps_the_good_rows(payload, kind) -> None:
    serde = JsonSerde()
    good = serde.encode_batch(readings(3))
    out = serde.decode_frame([good[0], payload, good[1], good[2]])
    assert_partition(out, 4)
    assert out.rows.tolist() == [0, 2, 3]
    assert [(i, e.kind) for i, e in out.errors] == [(1, kind)]
    assert out.frame.to_dicts() == readings(3)


def test_json_payloads_with_raw_newlines_decode_like_orjson() -> None:
    serde = JsonSerde()
    payloads = [b'{\n  "a": 1,\n  "b": "x"\n}', b'{"a": 2, "b": "y\\nz"}', b'\r\n{"a":3}\n']
    out = serde.decode_frame(payloads)
    assert out.errors == []
    assert out.frame.rows() == [(1, "x"), (2, "y\nz"), (3, None)]


def test_json_missing_keys_are_null() -> None:
    out = JsonSerde().decode_frame([b'{"a": 1}', b'{"b": "x", "a": 2}', b"{}"])
    assert sorted(out.frame.columns) == ["a", "b"]  # in the order polars infers them
    assert out.frame.select("a", "b").rows() == [(1, None), (2, "x"), (None, None)]


def test_json_only_empty_objects_keep_their_rows() -> None:
    out = JsonSerde().decode_frame([b"{}", b"{}", b"[]"])
    assert out.frame.shape == (2, 0) and out.rows.tolist() == [0, 1]


def test_json_huge_integer_makes_the_column_float_without_a_schema() -> None:
    """Integers past int64 are read as the nearest double (what orjson does past 2**64)."""
    payloads = [b'{"n": 1}', b'{"n": 18446744073709551616}', b'{"n": -9223372036854775809}']
    out = JsonSerde().decode_frame(payloads)
    assert out.errors == []
    assert out.frame.schema == pl.Schema({"n": pl.Float64})
    assert out.frame["n"].to_list() == [1.0, 2.0**64, -(2.0**63)]
    int64 = JsonSerde().decode_frame(
        [b'{"n": 9223372036854775807}', b'{"n": -9223372036854775808}']
    )
    assert int64.frame.schema == pl.Schema({"n": pl.Int64})  # the int64 bounds stay exact


def test_json_huge_integer_against_an_int64_schema_is_a_schema_mismatch() -> None:
    serde = JsonSerde(schema={"n": pl.Int64})
    out = serde.decode_frame([b'{"n": 1}', b'{"n": 18446744073709551616}', b'{"n": 3}'])
    assert out.frame["n"].to_list() == [1, 3]
    assert [(i, e.kind) for i, e in out.errors] == [(1, "SchemaMismatch")]
    exact = JsonSerde(schema={"n": pl.Int128}).decode_frame([b'{"n": 18446744073709551616}'])
    assert exact.frame["n"].to_list() == [2**64]


def test_json_int_then_float_across_batches_without_and_with_a_schema() -> None:
    """Without a schema, types are inferred per batch: an int column can become float."""
    loose = JsonSerde()
    first = loose.decode_frame([b'{"x": 1}', b'{"x": 2}'])
    second = loose.decode_frame([b'{"x": 1.5}', b'{"x": 2}'])
    assert first.frame.schema["x"] == pl.Int64
    assert second.frame.schema["x"] == pl.Float64
    typed = JsonSerde(schema={"x": pl.Float64})
    assert typed.decode_frame([b'{"x": 1}', b'{"x": 2}']).frame.schema["x"] == pl.Float64
    assert typed.decode_frame([b'{"x": 1.5}']).frame.schema["x"] == pl.Float64
    # and the other way round: a float against an Int64 schema is that row's error
    strict = JsonSerde(schema={"x": pl.Int64}).decode_frame([b'{"x": 1}', b'{"x": 1.5}'])
    assert strict.frame["x"].to_list() == [1]
    assert [(i, e.kind) for i, e in strict.errors] == [(1, "SchemaMismatch")]


def test_json_schema_drops_other_keys_and_nulls_missing_ones() -> None:
    serde = JsonSerde(schema={"a": pl.Int64, "b": pl.String})
    out = serde.decode_frame([b'{"a": 1, "z": true}', b'{"b": "x"}'])
    assert out.frame.schema == pl.Schema({"a": pl.Int64, "b": pl.String})
    assert out.frame.rows() == [(1, None), (None, "x")]
    empty = serde.decode_frame([None])
    assert empty.frame.schema == serde.decode_frame([]).frame.schema == out.frame.schema


def test_json_types_polars_cannot_join_make_the_later_rows_errors() -> None:
    payloads = [b'{"a": 1}', b'{"a": {"b": 1}}', b'{"a": 2}', b'{"a": true}', b'{"a": 2.5}']
    out = JsonSerde().decode_frame(payloads)
    assert_partition(out, 5)
    assert out.frame["a"].to_list() == [1.0, 2.0, 2.5]
    assert [(i, e.kind) for i, e in out.errors] == [(1, "SchemaMismatch"), (3, "SchemaMismatch")]


@pytest.mark.parametrize(
    "payloads",
    [[b'{"a": 1}', b'{"a": "x"}'], [b'{"a": "x"}', b'{"a": 1.5}'], [b'{"a": "x"}', b'{"a": true}']],
)
def test_json_text_and_other_kinds_in_one_column_is_a_mismatch_not_a_changed_value(
    payloads: list[bytes],
) -> None:
    """polars would read ``1`` among strings as ``"1"``; the row that does not fit is dead-lettered."""
    out = JsonSerde().decode_frame(payloads)
    assert out.frame["a"].to_list() == [orjson.loads(payloads[0])["a"]]
    assert [(i, e.kind) for i, e in out.errors] == [(1, "SchemaMismatch")]


def test_json_encode_non_finite_floats_as_null_like_orjson() -> None:
    frame = pl.DataFrame(
        {
            "x": [float("nan"), float("inf"), -float("inf"), 1.0],
            "l": [[float("nan")], None, [1.0], []],
        }
    )
    out = JsonSerde().encode_frame(frame)
    assert out == JsonSerde().encode_batch(frame.to_dicts())
    assert [orjson.loads(p)["x"] for p in out] == [None, None, None, 1.0]
    strict = JsonSerde(allow_nan=False).encode_frame(frame)
    assert [type(p) is SerdeError for p in strict] == [True, True, True, False]


def test_json_encode_datetimes_as_rfc3339_like_orjson() -> None:
    utc = timezone.utc
    frame = pl.DataFrame(
        {
            "ts": [
                datetime(2026, 1, 1, tzinfo=utc),
                datetime(2026, 1, 1, 0, 0, 0, 1000, tzinfo=utc),
            ],
            "day": [date(2026, 1, 1), date(2026, 1, 2)],
        }
    ).with_columns(
        ms=pl.col("ts").dt.cast_time_unit("ms"),
        paris=pl.col("ts").dt.convert_time_zone("Europe/Paris"),
        naive=pl.col("ts").dt.replace_time_zone(None),
    )
    out = JsonSerde().encode_frame(frame)
    assert out == JsonSerde().encode_batch(frame.to_dicts())
    assert orjson.loads(out[0]) == {
        "ts": "2026-01-01T00:00:00+00:00",
        "day": "2026-01-01",
        "ms": "2026-01-01T00:00:00+00:00",
        "paris": "2026-01-01T01:00:00+01:00",
        "naive": "2026-01-01T00:00:00",
    }
    assert orjson.loads(out[1])["ts"] == "2026-01-01T00:00:00.001000+00:00"
    # and read back into the same frame when the schema says Datetime
    back = JsonSerde(schema=frame.select("ts", "day").schema).decode_frame(out)
    assert back.frame.equals(frame.select("ts", "day"))


def test_json_encode_falls_back_row_by_row_for_what_polars_cannot_write() -> None:
    frame = pl.DataFrame({"b": [b"ab", None], "d": [timedelta(seconds=1), None]})
    out = JsonSerde().encode_frame(frame)  # polars panics on Binary: never reaches the caller
    assert out[1] == b'{"b":null,"d":null}'
    assert type(out[0]) is SerdeError  # orjson cannot write a timedelta
    assert JsonSerde().encode_frame(pl.DataFrame({"b": [b"ab"]})) == [b'{"b":"ab"}']


def test_json_encode_empty_frames() -> None:
    assert JsonSerde().encode_frame(pl.DataFrame()) == []
    assert JsonSerde().encode_frame(pl.DataFrame(height=2)) == [b"{}", b"{}"]


FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([5e-324, -5e-324, 1.7976931348623157e308, -0.0, 0.1, 1e16, 1e-7]),
)
INTS = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([-(2**63), 2**63 - 1, 0]))
TEXT = st.one_of(st.text(), st.sampled_from(['"', "\\", "\n", "\r\n", "\u2028", "\x00", "é😀"]))


@st.composite
def frames(draw) -> pl.DataFrame:
    n = draw(st.integers(1, 8))

    def column(values, dtype):
        return pl.Series(
            draw(st.lists(st.one_of(st.none(), values), min_size=n, max_size=n)), dtype=dtype
        )

    return pl.DataFrame(
        {
            "f": column(FLOATS, pl.Float64),
            "i": column(INTS, pl.Int64),
            "s": column(TEXT, pl.String),
            "b": column(st.booleans(), pl.Boolean),
            "l": column(st.lists(INTS, max_size=3), pl.List(pl.Int64)),
        }
    )


def _json_value(value):
    """What orjson writes for a value: NaN and infinity become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@settings(max_examples=200)
@given(frame=frames())
def test_json_encode_frame_is_valid_json_of_the_same_values(frame: pl.DataFrame) -> None:
    out = JsonSerde().encode_frame(frame)
    assert len(out) == frame.height
    for payload, row in zip(out, frame.iter_rows(named=True)):
        assert isinstance(payload, bytes)
        assert orjson.loads(payload) == {k: _json_value(v) for k, v in row.items()}
    back = JsonSerde(schema=frame.schema).decode_frame(out)
    assert back.errors == []
    expected = frame.with_columns(pl.col("f").fill_nan(None).replace([math.inf, -math.inf], None))
    assert back.frame.equals(expected)


GOOD_JSON = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=8),
        "n": st.integers(-(2**63), 2**63 - 1),
        "x": st.floats(allow_nan=False, allow_infinity=False),
        "ok": st.booleans(),
        "tags": st.lists(st.text(max_size=4), max_size=3),
    },
).map(orjson.dumps)
JSON_PAYLOADS = st.lists(
    st.one_of(
        GOOD_JSON,
        GOOD_JSON.map(lambda p: p.replace(b",", b",\n")),  # raw newlines
        st.binary(max_size=24),
        st.binary(max_size=24).map(lambda b: b"{" + b + b"}"),
        st.sampled_from([b"[]", b"null", b"1", b"{", b"}", b"{}", b"", b" ", b"{}\n{}"]),
        st.none(),
    ),
    max_size=25,
)


def _columns_mixing_text(values: list) -> set[str]:
    """Keys whose non-null values are text in some objects and not in others."""
    kinds: dict[str, set[bool]] = {}
    for value in values:
        if type(value) is dict:
            for key, x in value.items():
                if x is not None:
                    kinds.setdefault(key, set()).add(isinstance(x, str))
    return {key for key, seen in kinds.items() if len(seen) > 1}


@settings(max_examples=300)
@given(payloads=JSON_PAYLOADS)
def test_json_decode_frame_partitions_and_matches_decode_batch(payloads) -> None:
    serde = JsonSerde()
    out = serde.decode_frame(payloads)
    assert_partition(out, len(payloads))
    values = serde.decode_batch(payloads)
    assert_rows_match_batch(out, values)
    bad = dict(out.errors)
    mixed = _columns_mixing_text(values)
    for i, value in enumerate(values):
        if type(value) is dict:
            if mixed & set(value):  # random bytes made a text value where others have numbers
                assert i not in bad or bad[i].kind == "SchemaMismatch"
            else:
                assert i not in bad  # these payloads' types always join: none is lost
        elif value is None:
            assert bad[i].kind in ("Tombstone", "NotARecord")


# ---------------------------------------------------------------- Avro


@pytest.mark.parametrize("make", [lambda: AvroSerde(READING), lambda: confluent(name="rt")])
@pytest.mark.parametrize("n", [1, 40])
def test_avro_round_trip_of_readings(make, n: int) -> None:
    serde = make()
    rows = readings(n)
    payloads = serde.encode_batch(rows)
    out = serde.decode_frame(payloads)
    assert out.errors == [] and out.rows.tolist() == list(range(n))
    assert out.frame.to_dicts() == rows == serde.decode_batch(payloads)
    assert out.frame.schema["ts"] == pl.Int64 and out.frame.schema["sensor_id"] == pl.String
    assert serde.encode_frame(out.frame) == payloads


def test_avro_types_come_from_the_schema_on_the_fast_and_the_slow_path() -> None:
    schema = {
        "type": "record",
        "name": "All",
        "fields": [
            {"name": "s", "type": "string"},
            {"name": "b", "type": "bytes"},
            {"name": "i", "type": "int"},
            {"name": "f", "type": "float"},
            {"name": "ok", "type": "boolean"},
            {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        ],
    }
    serde = AvroSerde(schema)
    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = [
        {
            "s": "é" * k,
            "b": b"\x00" * k,
            "i": -k,
            "f": 0.5 * k,
            "ok": k % 2 == 0,
            "ts": when,
            "us": when,
        }
        for k in range(4)
    ]
    payloads = serde.encode_batch(rows)
    fast = serde.decode_frame(payloads)
    slow = serde.decode_frame(payloads + [None])  # a tombstone sends the batch per record
    assert fast.frame.equals(slow.frame)
    assert fast.frame.schema == pl.Schema(
        {
            "s": pl.String,
            "b": pl.Binary,
            "i": pl.Int32,
            "f": pl.Float32,
            "ok": pl.Boolean,
            "ts": pl.Datetime("ms", "UTC"),
            "us": pl.Datetime("us", "UTC"),
        }
    )
    assert fast.frame.to_dicts() == rows


def test_avro_nested_schema_falls_back_to_rows_with_types_from_the_schema() -> None:
    serde = AvroSerde(NESTED)
    rows = [{"id": "a", "tags": ["x", "y"], "score": None}, {"id": "b", "tags": [], "score": 1.5}]
    out = serde.decode_frame(serde.encode_batch(rows))
    assert out.frame.to_dicts() == rows
    assert out.frame.schema == pl.Schema(
        {"id": pl.String, "tags": pl.List(pl.String), "score": pl.Float64}
    )


def test_confluent_malformed_payloads_are_errors_and_keep_the_good_rows() -> None:
    serde = confluent(name="bad")
    good = serde.encode_batch(readings(40))
    payloads = list(good)
    payloads[3] = b"\x01" + good[3][1:]  # wrong magic byte
    payloads[5] = b"\x00\x00\x00\x00\x63" + good[5][5:]  # unknown schema id 99
    payloads[7] = good[7][:-3]  # truncated
    payloads[9] = None  # tombstone
    payloads[11] = b"\x00\x00"  # shorter than the header
    payloads[13] = good[13] + b"\x00"  # a byte too many
    out = serde.decode_frame(payloads)
    assert_partition(out, 40)
    kinds = {i: e.kind for i, e in out.errors}
    assert kinds == {
        3: "DecodeError",
        5: "UnknownSchema",
        7: "DecodeError",
        9: "Tombstone",
        11: "DecodeError",
        13: "DecodeError",
    }
    assert "magic byte" in str(dict(out.errors)[3])
    assert_rows_match_batch(out, serde.decode_batch(payloads))
    assert out.frame.schema == serde.decode_frame(good).frame.schema


def test_confluent_with_a_reader_schema_uses_its_types() -> None:
    v2 = {
        **READING,
        "fields": [*READING["fields"], {"name": "site", "type": "string", "default": "?"}],
    }
    writer = confluent(name="evolve")
    payloads = writer.encode_batch(readings(3))
    reader = ConfluentAvroSerde(writer._registry, reader_schema=v2)
    out = reader.decode_frame(payloads)
    assert out.frame["site"].to_list() == ["?", "?", "?"]
    assert out.frame.columns[-1] == "site"


AVRO_PAYLOADS = st.lists(
    st.one_of(
        st.sampled_from(AvroSerde(READING).encode_batch(readings(5))),
        st.binary(max_size=40),
        st.none(),
    ),
    max_size=40,
)


@settings(max_examples=200)
@given(payloads=AVRO_PAYLOADS)
def test_avro_decode_frame_partitions_and_matches_decode_batch(payloads) -> None:
    serde = AvroSerde(READING)
    out = serde.decode_frame(payloads)
    assert_partition(out, len(payloads))
    values = serde.decode_batch(payloads)
    assert_rows_match_batch(out, values)
    assert sorted(out.rows.tolist()) == [i for i, v in enumerate(values) if type(v) is dict]


CONFLUENT = confluent(name="fuzz-frames")
CONFLUENT_PAYLOADS = st.lists(
    st.one_of(
        st.sampled_from(CONFLUENT.encode_batch(readings(5))),
        st.binary(max_size=40).map(lambda b: b"\x00\x00\x00\x00\x01" + b),
        st.binary(max_size=40),
        st.none(),
    ),
    max_size=40,
)


@settings(max_examples=200)
@given(payloads=CONFLUENT_PAYLOADS)
def test_confluent_decode_frame_partitions_and_matches_decode_batch(payloads) -> None:
    out = CONFLUENT.decode_frame(payloads)
    assert_partition(out, len(payloads))
    values = CONFLUENT.decode_batch(payloads)
    assert_rows_match_batch(out, values)
    assert sorted(out.rows.tolist()) == [i for i, v in enumerate(values) if type(v) is dict]


# ---------------------------------------------------------------- bytes and text


def test_string_and_bytes_frames_are_one_value_column() -> None:
    payloads = [b"pump-1", None, b"\xff", "not bytes"]
    text = StringSerde().decode_frame(payloads)
    assert_partition(text, 4)
    assert text.frame.schema == pl.Schema({"value": pl.String})
    assert text.frame["value"].to_list() == ["pump-1", None]
    assert [i for i, _ in text.errors] == [2, 3]
    raw = BytesSerde().decode_frame(payloads[:3])
    assert raw.frame["value"].to_list() == [b"pump-1", None, b"\xff"] and raw.errors == []
    assert StringSerde().encode_frame(text.frame) == [b"pump-1", None]
    assert BytesSerde().encode_frame(raw.frame) == [b"pump-1", None, b"\xff"]
    assert StringSerde().encode_frame(pl.DataFrame({"n": [1, 2]})) == [b"1", b"2"]
    assert [e.kind for e in StringSerde().encode_frame(pl.DataFrame({"a": [1], "b": [2]}))] == [
        "EncodeError"
    ]


@settings(max_examples=200)
@given(payloads=st.lists(st.one_of(st.binary(max_size=8), st.none()), max_size=20))
def test_string_decode_frame_matches_decode_batch(payloads) -> None:
    serde = StringSerde()
    out = serde.decode_frame(payloads)
    assert_partition(out, len(payloads))
    values = serde.decode_batch(payloads)
    assert out.frame["value"].to_list() == [values[i] for i in out.rows.tolist()]
    assert [i for i, _ in out.errors] == [i for i, v in enumerate(values) if type(v) is SerdeError]


# ---------------------------------------------------------------- user serdes


def test_default_frames_for_a_serde_with_only_row_methods() -> None:
    class Csv:
        def decode_batch(self, payloads):
            return [
                dict(zip(("a", "b"), p.decode().split(","))) if p else SerdeError("Empty", "no")
                for p in payloads
            ]

        def encode_batch(self, values):
            return [f"{v['a']},{v['b']}".encode() for v in values]

    out = decode_frame(Csv(), [b"1,x", b"", b"2,y"])
    assert out.frame.rows() == [("1", "x"), ("2", "y")]
    assert [(i, e.kind) for i, e in out.errors] == [(1, "Empty")]
    assert encode_frame(Csv(), out.frame) == [b"1,x", b"2,y"]


GOOD_CONFLUENT = CONFLUENT.encode_batch(readings(200))


@settings(max_examples=100)
@given(
    spoiled=st.dictionaries(
        st.integers(0, 199),
        st.one_of(
            st.none(),
            st.binary(max_size=12),
            st.integers(1, 30).map(lambda cut: ("truncate", cut)),
            st.binary(min_size=1, max_size=8).map(lambda b: ("same header", b)),
        ),
        max_size=12,
    )
)
def test_confluent_mostly_good_batch_keeps_every_good_row(spoiled) -> None:
    """A few bad payloads among many good ones: the good ones still decode, as decode_batch says."""
    payloads = list(GOOD_CONFLUENT)
    for i, spoil in spoiled.items():
        if isinstance(spoil, tuple) and spoil[0] == "truncate":
            payloads[i] = payloads[i][: -spoil[1]]
        elif isinstance(spoil, tuple):
            payloads[i] = payloads[i][:5] + spoil[1]
        else:
            payloads[i] = spoil
    out = CONFLUENT.decode_frame(payloads)
    assert_partition(out, len(payloads))
    values = CONFLUENT.decode_batch(payloads)
    assert_rows_match_batch(out, values)
    assert out.rows.tolist() == [i for i, v in enumerate(values) if type(v) is dict]
