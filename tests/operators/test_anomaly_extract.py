"""Reading the scored fields of an event: the fast path against field-by-field reading."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.anomaly import _clock

FIELDS = ("a", "b", "c")


def field_by_field(event: dict[str, Any]) -> tuple[float, ...]:
    """The plain reading: each field in turn, then every value must be finite."""
    xs = tuple(float(event[f]) for f in FIELDS)
    for x in xs:
        if x - x != 0.0:
            raise _clock._NonFiniteError(x)
    return xs


def outcome(read: Any, event: dict[str, Any]) -> tuple:
    try:
        return ("ok", read(event))
    except Exception as e:  # noqa: BLE001 - the error itself is the outcome compared
        return (type(e).__name__, str(e))


field_value = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 1.7e308]),  # finite values whose sum overflows
    st.integers(-(10**6), 10**6),
    st.booleans(),
    st.sampled_from(["2.5", "nan", "-inf", "abc", "", None]),
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS + ("other",)), field_value))
def test_many_fields_read_as_field_by_field(event):
    assert outcome(_clock._field_values(FIELDS), event) == outcome(field_by_field, event)


def test_overflowing_sum_is_not_mistaken_for_a_non_finite_value():
    read = _clock._field_values(FIELDS)
    assert read({"a": 1e308, "b": 1e308, "c": 0}) == (1e308, 1e308, 0.0)
