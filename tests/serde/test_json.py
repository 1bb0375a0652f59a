"""JSON serde: batches in, batches out, failures as markers."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import numpy as np
import orjson
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from streamml.serde import JsonSerde, SerdeError, StringSerde
from streamml.serde.base import split_records
from streamml.serde.json import _one_object_per_line, _plain_line


def test_round_trip_with_numpy_and_datetime() -> None:
    serde = JsonSerde()
    value = {
        "x": np.float32(1.5),
        "v": np.arange(3),
        "t": datetime(2026, 1, 1, tzinfo=timezone.utc),
    }
    [payload] = serde.encode_batch([value])
    assert serde.decode_batch([payload]) == [
        {"x": 1.5, "v": [0, 1, 2], "t": "2026-01-01T00:00:00+00:00"}
    ]


def test_bad_payloads_are_markers_in_place() -> None:
    out = JsonSerde().decode_batch([b"1", b"\xff", b"", b'{"a":', b"[2]"])
    assert out[0] == 1 and out[4] == [2]
    assert [type(o) for o in out[1:4]] == [SerdeError] * 3


def test_non_finite_rejected_only_when_asked() -> None:
    assert JsonSerde().encode_batch([{"x": math.nan}]) == [b'{"x":null}']
    [err] = JsonSerde(allow_nan=False).encode_batch([{"x": [1.0, math.inf]}])
    assert isinstance(err, SerdeError) and "NaN or infinity" in str(err)


def test_unencodable_object_is_a_marker() -> None:
    [err] = JsonSerde().encode_batch([{"x": object()}])
    assert isinstance(err, SerdeError) and err.kind == "EncodeError"


def test_string_keys() -> None:
    assert StringSerde().encode_batch(["pump-1", None]) == [b"pump-1", None]


ZONES = [None, "UTC", "Europe/Paris"]
JSON_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([5e-324, 1.7976931348623157e308, -0.0, 0.1, 1e16, 1e-7, 123456789.123]),
)
TEXTS = st.one_of(st.text(), st.sampled_from(['"', "\\", "\n", "\u2028", "\x00", "\x1f", "é😀"]))
TIMES = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30))
NS_TIMES = st.datetimes(min_value=datetime(1678, 1, 1), max_value=datetime(2261, 12, 31))


@st.composite
def fraud_like_frames(draw) -> pl.DataFrame:
    """Frames of the columns a sink writes: text, numbers, flags, event times, lists, structs."""
    n = draw(st.integers(1, 6))

    def column(values, dtype) -> pl.Series:
        return pl.Series(
            draw(st.lists(st.one_of(st.none(), values), min_size=n, max_size=n)), dtype=dtype
        )

    unit = draw(st.sampled_from(["us", "ms", "ns"]))
    zone = draw(st.sampled_from(ZONES))
    times = TIMES if unit != "ns" else NS_TIMES  # nanoseconds in int64: the years 1678-2261
    if zone == "Europe/Paris":  # polars' zone tables end in 2099 (no summer time after it)
        times = times.filter(lambda t: t.year < 2100)
    ts = column(times, pl.Datetime("us")).dt.cast_time_unit(unit)
    return pl.DataFrame(
        {
            "tx_id": column(TEXTS, pl.String),
            "amount": column(JSON_FLOATS, pl.Float64),
            "n": column(st.integers(-(2**63), 2**63 - 1), pl.Int64),
            "flag": column(st.booleans(), pl.Boolean),
            "day": column(st.dates(), pl.Date),
            "ts": ts if zone is None else ts.dt.replace_time_zone("UTC").dt.convert_time_zone(zone),
            "scores": column(st.lists(JSON_FLOATS, max_size=3), pl.List(pl.Float64)),
            "meta": column(
                st.fixed_dictionaries({"a": st.one_of(st.none(), JSON_FLOATS), "b": TEXTS}),
                pl.Struct({"a": pl.Float64, "b": pl.String}),
            ),
        }
    )


@settings(max_examples=150, deadline=None)
@given(frame=fraud_like_frames(), allow_nan=st.booleans())
def test_encode_frame_writes_the_bytes_encode_batch_writes(frame, allow_nan) -> None:
    """The frame writer (one polars expression) and orjson over the rows agree byte for byte."""
    serde = JsonSerde(allow_nan=allow_nan)

    def seen(out: list) -> list:
        return [(p.kind, str(p)) if type(p) is SerdeError else p for p in out]

    assert seen(serde.encode_frame(frame)) == seen(serde.encode_batch(frame.to_dicts()))


def test_encode_frame_datetimes_on_and_off_whole_seconds() -> None:
    """The '.000000' rule in every unit, nanoseconds below a microsecond included."""
    second = 1_767_225_600  # 2026-01-01T00:00:00
    for unit, per_second in (("ms", 10**3), ("us", 10**6), ("ns", 10**9)):
        for ticks in ([1, 2], [0, 1], [per_second // 1_000_000 or 1]):  # off, on and (ns) near
            frame = pl.DataFrame(
                {"ts": pl.Series([second * per_second + t for t in ticks], dtype=pl.Int64)}
            ).select(pl.col("ts").cast(pl.Datetime(unit)))
            serde = JsonSerde()
            assert serde.encode_frame(frame) == serde.encode_batch(frame.to_dicts()), (unit, ticks)
    sub = pl.DataFrame({"ts": [second * 10**9 + 500]}).select(pl.col("ts").cast(pl.Datetime("ns")))
    assert JsonSerde().encode_frame(sub) == [b'{"ts":"2026-01-01T00:00:00"}']


X_VALUES = st.one_of(
    TEXTS, st.none(), st.integers(-5, 5), st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.lists(st.integers(0, 3), max_size=2), st.just({"x": 1}), st.just("x"),
)  # fmt: skip


def _spelled(row: dict, how: str) -> bytes:
    """``row`` as JSON bytes, written as orjson does or as other writers may."""
    if how == "orjson":
        return orjson.dumps(row)
    if how == "spaces":
        return json.dumps(row).encode()  # '"x": 1', with a space
    if how == "escaped key":
        return orjson.dumps(row).replace(b'"x":', b'"\\u0078":')
    return orjson.dumps({**row, "m": {"x": row.get("x")}})  # the key again, nested


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.fixed_dictionaries({"n": st.integers(0, 9)}, optional={"x": X_VALUES}), max_size=12
    ),
    how=st.lists(st.sampled_from(["orjson", "spaces", "escaped key", "nested"]), min_size=12),
)
def test_decode_frame_keeps_text_columns_text(rows: list, how: list) -> None:
    """A String column takes text and null only, however the payloads spell the key:
    a number, bool, list or object there is a SchemaMismatch, never its JSON text."""
    payloads = [_spelled(row, h) for row, h in zip(rows, how)]
    out = JsonSerde(schema={"x": pl.String, "n": pl.Int64}).decode_frame(payloads)
    text = [i for i, row in enumerate(rows) if isinstance(row.get("x"), (str, type(None)))]
    assert out.rows.tolist() == text
    assert out.frame["x"].to_list() == [rows[i].get("x") for i in text]
    assert {err.kind for _, err in out.errors} <= {"SchemaMismatch"}
    inferred = JsonSerde().decode_frame(payloads)  # without a schema: text stays what it was
    if "x" in inferred.frame.columns and inferred.frame.schema["x"] == pl.String:
        got = inferred.frame["x"].to_list()
        assert got == [rows[i].get("x") for i in inferred.rows.tolist()]


def test_decode_frame_reads_bytes_like_payloads_as_their_bytes() -> None:
    """bytearray and memoryview payloads are joined and read like bytes (the batch's types are not
    looked at one by one): the same rows, values and errors as the same bytes; str payloads take
    the row-by-row path and decode the same too."""
    payloads = [b'{"x":"a","n":1}', b'{"x":1,"n":2}', b'{"n":3}', b'{"x":null,"n":4}']
    serde = JsonSerde(schema={"x": pl.String, "n": pl.Int64})
    want = serde.decode_frame(payloads)
    assert want.rows.tolist() == [0, 2, 3] and want.frame["n"].to_list() == [1, 3, 4]
    for kind in (bytearray, memoryview, bytes.decode):
        got = serde.decode_frame([kind(p) for p in payloads])
        assert got.frame.equals(want.frame) and got.rows.tolist() == want.rows.tolist()
        assert [(i, e.kind) for i, e in got.errors] == [(i, e.kind) for i, e in want.errors]
    clean = [p for p in payloads if b'"x":1' not in p]
    assert serde.decode_frame([bytearray(p) for p in clean]).frame.equals(
        serde.decode_frame(clean).frame
    )


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([b"{", b"[", b""]),
    st.lists(
        st.sampled_from([b"\n", b"\\", b"\\ud", b"\\uD", b"\\u00", b'"a":1', b"}{"]), max_size=4
    ),
    st.sampled_from([b"}", b"]", b""]),
)
def test_plain_line_is_one_object_per_line_of_one(first: bytes, middle: list, last: bytes) -> None:
    """The row-by-row path's check of one payload (no NumPy) says what the batch check says of
    a batch of that one payload: fails with any of its four conditions dropped or changed."""
    payload = first + b"".join(middle) + last
    assert _plain_line(payload) == _one_object_per_line(payload, 1)


@settings(max_examples=100, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.fixed_dictionaries({"n": st.integers(-9, 9)}, optional={"x": TEXTS | st.none()}),
            st.sampled_from(["orjson", "indented", "str", "broken", "tombstone", "list"]),
        ),
        max_size=10,
    )
)
def test_decode_frame_row_by_row_path_reads_what_the_clean_batch_reads(rows: list) -> None:
    """A batch with bad payloads, tombstones, payloads over several lines or str payloads decodes
    its good rows as the same rows spelled by orjson alone do, in their places."""
    spelled = {
        "orjson": orjson.dumps,
        "indented": lambda row: json.dumps(row, indent=1).encode(),
        "str": lambda row: orjson.dumps(row).decode(),
        "broken": lambda row: orjson.dumps(row)[:-1],
        "tombstone": lambda row: None,
        "list": lambda row: orjson.dumps([row]),
    }
    payloads = [spelled[how](row) for row, how in rows]
    good = [i for i, (_, how) in enumerate(rows) if how in ("orjson", "indented", "str")]
    serde = JsonSerde(schema={"x": pl.String, "n": pl.Int64})
    out = serde.decode_frame(payloads)
    assert out.rows.tolist() == good
    assert out.frame.equals(serde.decode_frame([orjson.dumps(rows[i][0]) for i in good]).frame)
    assert sorted(i for i, _ in out.errors) == sorted(set(range(len(rows))) - set(good))
    slow = split_records([None])[2][0][1]  # the row-by-row path's tombstone
    assert all(
        (e.kind, str(e)) == (slow.kind, str(slow)) for i, e in out.errors if payloads[i] is None
    )
