"""The sensor flow's validation: its fast path agrees with the full check on any reading."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from examples.sensor_anomaly.features import FIELDS
from examples.sensor_anomaly.flow import _check, validate_readings
from streamml.errors import Rejected
from streamml.kafka import Record

_NOW = datetime.now(timezone.utc)

bad_measures = st.one_of(
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1.7e308, -1.7e308]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(),
    st.none(),
    st.text(max_size=3),
    st.booleans(),
)
bad_times = st.one_of(
    st.datetimes(),  # naive
    st.datetimes(timezones=st.just(timezone.utc)),  # mostly out of range
    st.just(_NOW + timedelta(days=2)),
    st.integers(),
    st.none(),
)


def _record(value, offset: int) -> Record:
    return Record(
        value=value,
        key=b"s1",
        topic="t",
        partition=0,
        offset=offset,
        timestamp_ms=0,
        raw_key=b"s1",
        raw_value=b"",
    )


@st.composite
def readings(draw):
    """A valid reading with none, one or a few of its fields spoiled or missing."""
    value = {
        "sensor_id": "s1",
        **{f: draw(st.floats(-1e6, 1e6)) for f in FIELDS},
        "ts": draw(
            st.datetimes(
                datetime(2001, 1, 1), datetime(2026, 1, 1), timezones=st.just(timezone.utc)
            )
        ),
    }
    for name in draw(st.lists(st.sampled_from([*FIELDS, "ts"]), max_size=3)):
        if draw(st.booleans()):
            value[name] = draw(bad_times if name == "ts" else bad_measures)
        else:
            value.pop(name, None)
    return value


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(readings(), st.none(), st.text(max_size=2)), max_size=8))
def test_validate_keeps_exactly_what_the_full_check_accepts(values):
    records = [_record(v, i) for i, v in enumerate(values)]
    out = validate_readings("validate")(records)
    assert len(out) == len(values)
    for value, result in zip(values, out, strict=True):
        expected = _check(value, datetime.now(timezone.utc)) if isinstance(value, dict) else "x"
        if expected is None:
            assert result == ("s1", value)
        else:
            assert isinstance(result, Rejected) and result.error_type == "InvalidReading"


def test_validate_rejects_naive_and_far_future_times():
    fine = {f: 1.0 for f in FIELDS}
    naive = {"sensor_id": "s", **fine, "ts": datetime(2024, 1, 1)}
    future = {"sensor_id": "s", **fine, "ts": _NOW + timedelta(days=30)}
    ok = {"sensor_id": "s", **fine, "ts": _NOW}
    records = [_record(v, i) for i, v in enumerate([naive, future, ok])]
    out = validate_readings("validate")(records)
    assert [type(x).__name__ for x in out] == ["Rejected", "Rejected", "tuple"]
    assert "outside" in out[0].reason
