"""The sensor flow's validation: its one-expression check agrees with the full check on any reading."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from examples.sensor_anomaly.features import FIELDS
from examples.sensor_anomaly.flow import _check, validate_readings
from streamml.errors import Rejected

_NOW = datetime.now(timezone.utc)
SCHEMA = {
    "sensor_id": pl.String,
    "ts": pl.Datetime("ms", "UTC"),
    **dict.fromkeys(FIELDS, pl.Float64),
    "kafka_offset": pl.Int64,
}

measures = st.one_of(
    st.floats(-1e6, 1e6),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1.7e308, -1.7e308]),
    st.none(),
)
times = st.one_of(
    st.datetimes(datetime(2001, 1, 1), datetime(2026, 1, 1), timezones=st.just(timezone.utc)),
    st.datetimes(datetime(1900, 1, 1), datetime(2300, 1, 1), timezones=st.just(timezone.utc)),
    st.just(_NOW + timedelta(days=2)),
    st.none(),
)


@st.composite
def readings(draw, offset: int) -> dict:
    return {
        "sensor_id": draw(st.one_of(st.just("s1"), st.none())),
        "ts": draw(times),
        **{f: draw(measures) for f in FIELDS},
        "kafka_offset": offset,
    }


@st.composite
def frames(draw) -> pl.DataFrame:
    n = draw(st.integers(1, 8))
    return pl.DataFrame([draw(readings(i)) for i in range(n)], schema=SCHEMA, orient="row")


@settings(max_examples=300, deadline=None)
@given(frames())
def test_validate_keeps_exactly_what_the_full_check_accepts(frame: pl.DataFrame) -> None:
    out = validate_readings("validate")(frame)
    kept = [x for x in out if isinstance(x, pl.DataFrame)]
    rejected = [x for x in out if isinstance(x, Rejected)]
    assert len(kept) <= 1 and all(len(f) for f in kept)
    kept_offsets = kept[0]["kafka_offset"].to_list() if kept else []
    now = datetime.now(timezone.utc)
    for row in frame.to_dicts():
        fine = _check(row, now) is None and row["sensor_id"] is not None
        assert (row["kafka_offset"] in kept_offsets) == fine, row
    assert len(kept_offsets) + len(rejected) == len(frame)
    assert all(r.error_type == "InvalidReading" and r.reason for r in rejected)
    assert all(r.original["kafka_offset"] not in kept_offsets for r in rejected)


def test_validate_rejects_far_future_times_with_the_reason() -> None:
    fine = dict.fromkeys(FIELDS, 1.0)
    frame = pl.DataFrame(
        [
            {"sensor_id": "s", **fine, "ts": _NOW + timedelta(days=30), "kafka_offset": 0},
            {"sensor_id": "s", **fine, "ts": _NOW, "kafka_offset": 1},
        ],
        schema=SCHEMA,
    )
    out = validate_readings("validate")(frame)
    assert [type(x).__name__ for x in out] == ["DataFrame", "Rejected"]
    assert "outside" in out[1].reason and out[1].original["kafka_offset"] == 0


def test_a_frame_without_the_reading_columns_is_rejected_row_by_row() -> None:
    frame = pl.DataFrame({"sensor_id": ["s", "t"], "temperature": ["hot", "cold"]})
    out = validate_readings("validate")(frame)
    assert [r.error_type for r in out] == ["InvalidReading", "InvalidReading"]
    assert "not a column of floats" in out[0].reason
