"""Edge model: results with or instead of the raw data; a bad record keeps its data and a reason."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from streamml.ingest.edge import EdgeModel, note_header
from streamml.models import CallableModel


def _prepare(values: list[bytes]) -> np.ndarray:
    return np.array([[float(v)] for v in values], dtype=np.float32)  # raises on non-numbers


MODEL = CallableModel(lambda x: x[:, 0] * 2, outputs="double", version="v7")


def test_results_go_with_the_raw_values() -> None:
    values, notes = EdgeModel(MODEL, _prepare).apply([b"1", b"2.5"])
    assert values == [b"1", b"2.5"]
    headers = [note_header(n) for n in notes]
    assert [h for h, _ in headers] == ["streamml-result"] * 2
    assert [orjson.loads(v) for _, v in headers] == [
        {"double": 2.0, "model_version": "v7"},
        {"double": 5.0, "model_version": "v7"},
    ]


def test_results_instead_of_the_raw_values() -> None:
    values, notes = EdgeModel(MODEL, _prepare, send="instead").apply([b"3"])
    assert [orjson.loads(v) for v in values] == [{"double": 6.0, "model_version": "v7"}]
    assert notes == [None]


def test_a_bad_record_keeps_its_data_with_the_reason_and_the_others_get_results() -> None:
    values, notes = EdgeModel(MODEL, _prepare, send="instead").apply([b"1", b"oops", b"3"])
    assert values[1] == b"oops"
    header, reason = note_header(notes[1])
    assert header == "streamml-error" and b"ValueError" in reason
    assert [orjson.loads(values[i])["double"] for i in (0, 2)] == [2.0, 6.0]


def test_a_model_that_returns_the_wrong_rows_is_an_error_per_record() -> None:
    wrong = CallableModel(lambda x: x[:1, 0], outputs="y")
    values, notes = EdgeModel(wrong, _prepare).apply([b"1", b"2"])
    assert values == [b"1", b"2"]
    assert notes[0] is not None and notes[0].startswith(b"r")  # alone, one row is right
    assert notes[1] is not None and notes[1].startswith(b"r")


def test_send_must_be_with_or_instead() -> None:
    with pytest.raises(ValueError, match="send must be"):
        EdgeModel(MODEL, _prepare, send="beside")  # type: ignore[arg-type]
