"""Reading the scored fields of rows and frames: the same verdict as reading field by field."""

from __future__ import annotations

import math
import numbers
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.anomaly import ZScore, _engine
from streamml.operators.anomaly import scoring as scoring_mod

FIELDS = ("a", "b", "c")
T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def field_by_field(event: dict[str, Any]) -> tuple:
    """The plain reading: each field in turn; the first problem decides."""
    xs = []
    for f in FIELDS:
        if f not in event:
            return ("MissingField",)
        x = event[f]
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
            return ("NotANumber",)
        if not math.isfinite(x):
            return ("NonFinite",)
        xs.append(float(x))
    return ("ok", tuple(xs))


def read(event: dict[str, Any]) -> tuple:
    """What the score operator's shard makes of one row: its values, or its error type."""
    family = scoring_mod._Family(ZScore(list(FIELDS), window=timedelta(hours=1)), "score")
    timing = _engine.check_timing(
        "x",
        lateness=timedelta(0),
        span=timedelta(hours=1),
        ttl=None,
        max_future=None,
        fields=FIELDS,
    )
    shard = _engine.Shard(family, timing, _engine.RowInput(timing, lambda e: T0), None)
    oks, errs, _ = shard.on_batch([[("k", event)]])[0][0]
    if errs:
        return (errs[0].error_type,)
    return ("ok", tuple(float(x) for x in shard.family.record(shard.states[0])["scorer"]["ref"]))


field_value = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 1.7e308]),  # finite values whose sum overflows
    st.integers(-(10**6), 10**6),
    st.booleans(),
    st.sampled_from(["2.5", "nan", "-inf", "abc", "", None]),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS + ("other",)), field_value))
def test_many_fields_read_as_field_by_field(event):
    assert read(event) == field_by_field(event)


def test_overflowing_sum_is_not_mistaken_for_a_non_finite_value():
    assert read({"a": 1e308, "b": 1e308, "c": 0}) == ("ok", (1e308, 1e308, 0.0))
