"""JSON serde: batches in, batches out, failures as markers."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np

from streamml.serde import JsonSerde, SerdeError, StringSerde


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
