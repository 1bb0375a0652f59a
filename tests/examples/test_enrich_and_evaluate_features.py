"""The fraud example's one-pass features against the three-step chain they replace.

``add_features`` used to be ``derive`` → ``featurize.one_hot`` →
``featurize.assemble``; the reference below is that chain, verbatim. On
random enriched transactions — negative, zero, huge and non-float numbers,
missing fields, unknown and unhashable categories — both must give the same
vectors (float32, bit for bit) on events that keep the transaction's identity
(``tx_id``, ``account_id``, ``ts``, ``amount``), and the same rejections. Batches
of the usual types and ranges take a columnar pass, the rest an
event-by-event one: both are checked.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Dataflow, operator
from bytewax.operators import KeyedStream
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators import featurize
from streamml.operators.featurize import FeaturesOut

from examples.enrich_and_evaluate.data import CATEGORIES, generate
from examples.enrich_and_evaluate.features import (
    _KEPT,
    SCHEMA,
    _columnar,
    _features,
    _frame_features,
    add_features,
    feature_matrix,
)
from streamml.errors import reject


def _reference_derive(step_id: str):
    def derive(items: list[tuple[str, Any]]) -> list[Any]:
        log1p, nan = math.log1p, math.nan
        out: list[Any] = []
        for item in items:
            e = item[1]
            try:
                amount, limit, distance = e["amount"], e["credit_limit"], e["distance_km"]
                out.append(
                    (
                        e["tx_id"],
                        {
                            "tx_id": e["tx_id"],
                            "account_id": e["account_id"],
                            "ts": e["ts"],
                            "amount": amount,
                            "merchant_category": e["merchant_category"],
                            "log_amount": log1p(amount) if amount >= 0 else nan,
                            "amount_to_limit": amount / limit if limit > 0 else nan,
                            "foreign": float(e["country"] != e["home_country"]),
                            "card_present": float(e["card_present"]),
                            "night": float(1 <= e["local_hour"] <= 4),
                            "log_distance": log1p(distance) if distance >= 0 else nan,
                            "log_account_age": log1p(max(e["account_age_days"], 0)),
                            "risk_tier": float(e["risk_tier"]),
                        },
                    )
                )
            except Exception as exc:  # noqa: BLE001 - bad data goes to errs
                out.append(reject(step_id, exc, item))
        return out

    return derive


@operator
def _reference(step_id: str, up: KeyedStream[Any]) -> FeaturesOut:
    """The chain ``add_features`` was before its one-pass rewrite."""
    derived = op.branch(
        "derived",
        op.flat_map_batch("derive", up, _reference_derive(f"{step_id}.derive")),
        lambda x: type(x) is tuple,
    )
    hot = featurize.one_hot(
        "merchant_category", derived.trues, field="merchant_category", categories=CATEGORIES
    )
    vec = featurize.assemble("assemble", hot.oks, schema=SCHEMA)
    return FeaturesOut(oks=vec.oks, errs=op.merge("errs", derived.falses, hot.errs, vec.errs))


def _canon(x: Any) -> str:
    """A comparable text of an item: arrays as lists, NaN equal to NaN, field order kept."""
    if isinstance(x, np.ndarray):
        return f"array({x.dtype}, {x.tolist()!r})"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k!r}: {_canon(v)}" for k, v in x.items()) + "}"
    if isinstance(x, tuple):
        return f"{type(x).__name__}(" + ", ".join(_canon(v) for v in x) + ")"
    return repr(x)


def _outputs(features, events: list, batch: int) -> tuple[list, list]:
    flow = Dataflow("features_vs_reference")  # one name, so both paths' step ids are equal
    out = features("f", op.input("in", flow, TestingSource(events, batch)))
    oks: list = []
    errs: list = []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    return oks, errs


def _as_kept(item: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """A reference event as ``add_features`` keeps it: the transaction's identity and the vector."""
    key, e = item
    return key, {f: e[f] for f in ("tx_id", "account_id", "ts", "amount", "features")}


def _run(events: list[tuple[str, dict[str, Any]]], batch: int) -> tuple[list, list, list, list]:
    return (*_outputs(add_features, events, batch), *_outputs(_reference, events, batch))


_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-10.0, max_value=1e4),
    st.integers(min_value=-5, max_value=10**6),
    st.sampled_from([0, 0.0, 1e-300, 1e300, 3.5e38, -1.0]),
)


class _Money(float):
    """An amount type whose ratio to a limit is not a number (text, or nothing)."""

    def __new__(cls, value: float, ratio: Any) -> _Money:
        money = super().__new__(cls, value)
        money.ratio = ratio
        return money

    def __truediv__(self, other: Any) -> Any:
        return self.ratio

    def __repr__(self) -> str:
        return f"_Money({float(self)!r}, {self.ratio!r})"


@st.composite
def _events(draw) -> tuple[str, dict[str, Any]]:
    amount = draw(_NUMBERS)
    e: dict[str, Any] = {
        "tx_id": draw(st.sampled_from(["t1", "t2", "t3"])),
        "account_id": "a1",
        "ts": draw(st.integers(0, 10**12)),
        "amount": amount,
        "merchant_category": draw(
            st.one_of(st.sampled_from([*CATEGORIES, "unknown"]), st.just(["unhashable"]))
        ),
        "credit_limit": draw(_NUMBERS),
        "distance_km": draw(_NUMBERS),
        "country": draw(st.sampled_from(["NO", "SE"])),
        "home_country": "NO",
        "card_present": draw(st.booleans()),
        "local_hour": draw(st.integers(0, 23)),
        "account_age_days": draw(st.integers(-3, 5000)),
        "risk_tier": draw(st.integers(0, 3)),
    }
    exotic = draw(
        st.sampled_from([None, None, None, "decimal", "fraction", "missing", "str", "money"])
    )
    if exotic == "decimal" and isinstance(amount, float) and math.isfinite(amount):
        e["amount"], e["credit_limit"] = Decimal(repr(amount)), Decimal("7.5")
    elif exotic == "fraction" and isinstance(amount, int):
        e["credit_limit"] = Fraction(3, 7)
    elif exotic == "missing":
        del e[draw(st.sampled_from(sorted(e)))]
    elif exotic == "money":
        e["amount"] = _Money(abs(draw(st.floats(0, 1e4))), draw(st.sampled_from(["0.5", None])))
        e["credit_limit"] = 10.0
    elif exotic == "str":
        e["risk_tier"] = draw(st.sampled_from(["2", "high"]))
    return ("a1", e)


@settings(max_examples=150, deadline=None)
@given(st.lists(_events(), max_size=25), st.integers(1, 8))
def test_one_pass_features_match_the_three_step_chain(events, batch) -> None:
    oks, errs, ref_oks, ref_errs = _run(events, batch)
    assert [_canon(x) for x in oks] == [_canon(_as_kept(x)) for x in ref_oks]
    assert sorted(map(_canon, errs)) == sorted(map(_canon, ref_errs))
    assert len(oks) + len(errs) == len(events)


@st.composite
def _usual_events(draw) -> tuple[str, dict[str, Any]]:
    """Enriched transactions of the usual types and ranges: the columnar pass takes their batches."""
    amount = st.floats(0.0, 1e6)
    e = {
        "tx_id": f"t{draw(st.integers(0, 99))}",
        "account_id": "a1",
        "ts": draw(st.integers(0, 10**12)),
        "amount": draw(amount),
        "merchant_category": draw(st.sampled_from([*CATEGORIES, "unknown"])),
        "credit_limit": draw(st.floats(1e-3, 1e6)),
        "distance_km": draw(amount),
        "country": draw(st.sampled_from(["NO", "SE"])),
        "home_country": "NO",
        "card_present": draw(st.booleans()),
        "local_hour": draw(st.integers(0, 23)),
        "account_age_days": draw(st.integers(-3, 10**6)),
        "risk_tier": draw(st.integers(0, 3)),
    }
    return ("a1", e)


@settings(max_examples=100, deadline=None)
@given(st.lists(_usual_events(), min_size=1, max_size=40), st.integers(1, 40))
def test_the_columnar_pass_gives_the_chains_vectors_bit_for_bit(events, batch) -> None:
    assert _columnar([e for _, e in events]) is not None  # these batches take the columnar pass
    oks, errs, ref_oks, ref_errs = _run(events, batch)
    assert errs == ref_errs == []
    assert [_canon(x) for x in oks] == [_canon(_as_kept(x)) for x in ref_oks]


def test_the_example_data_takes_the_columnar_pass_with_the_chains_vectors() -> None:
    data = generate(600, n_accounts=80, seed=5)
    table = dict(data.accounts)
    events = [
        (t["account_id"], {**t, **table[t["account_id"]]})
        for t in data.transactions
        if table.get(t["account_id"])
    ]
    assert _columnar([e for _, e in events[:500]]) is not None
    oks, errs, ref_oks, ref_errs = _run(events, 500)
    assert errs == ref_errs == [] and len(oks) == len(events)
    assert [_canon(x) for x in oks] == [_canon(_as_kept(x)) for x in ref_oks]


def test_the_vectors_are_float32_rows_in_schema_order() -> None:
    tx = {
        "tx_id": "t1",
        "account_id": "a1",
        "ts": 0,
        "amount": 99.0,
        "merchant_category": "travel",
        "credit_limit": 1000.0,
        "distance_km": 0.0,
        "country": "SE",
        "home_country": "NO",
        "card_present": False,
        "local_hour": 12,
        "account_age_days": 0,
        "risk_tier": 2,
    }
    oks, errs, _, _ = _run([("a1", tx)], 1)
    assert errs == []
    [(key, event)] = oks
    vector = event["features"]
    assert key == "t1" and vector.dtype == np.float32 and vector.shape == (SCHEMA.width,)
    expected = [math.log1p(99.0), 0.099, 1.0, 0.0, 0.0, 0.0, 0.0, 2.0]
    expected += [float(c == "travel") for c in CATEGORIES] + [0.0]
    assert vector.tolist() == np.array(expected, dtype=np.float32).tolist()


# Frames: the flow's unit. The columnar pass over a frame must give the event-by-event
# pass's vectors bit for bit, and a frame with a bad value the same rejections.

_FRAME_SCHEMA = {
    "tx_id": pl.String,
    "account_id": pl.String,
    "ts": pl.Datetime("ms", "UTC"),
    "amount": pl.Float64,
    "merchant_category": pl.String,
    "credit_limit": pl.Float64,
    "distance_km": pl.Float64,
    "country": pl.String,
    "home_country": pl.String,
    "card_present": pl.Boolean,
    "local_hour": pl.Int32,
    "account_age_days": pl.Int64,
    "risk_tier": pl.Int64,
}
_FLOATS = st.one_of(
    st.floats(0.0, 1e6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, -1.0, 1e-300, 1e300, 3.5e38]),
)


@st.composite
def _frame_rows(draw, bad: bool) -> dict[str, Any]:
    """An enriched transaction as a frame row; with ``bad``, any value may be out of range or null."""
    floats = _FLOATS if bad else st.floats(1e-3, 1e6)
    row = {
        "tx_id": f"t{draw(st.integers(0, 99))}",
        "account_id": draw(st.sampled_from(["a1", "a2"])),
        "ts": datetime.fromtimestamp(draw(st.integers(0, 10**9)), timezone.utc),
        "amount": draw(floats),
        "merchant_category": draw(st.sampled_from([*CATEGORIES, "unknown"])),
        "credit_limit": draw(floats),
        "distance_km": draw(floats),
        "country": draw(st.sampled_from(["NO", "SE"])),
        "home_country": "NO",
        "card_present": draw(st.booleans()),
        "local_hour": draw(st.integers(0, 23)),
        "account_age_days": draw(st.integers(-3, 10**6)),
        "risk_tier": draw(st.integers(0, 3)),
    }
    if bad and draw(st.integers(0, 9)) == 0:
        row[draw(st.sampled_from(sorted(row)))] = None
    return row


def _frame_vs_rows(rows: list[dict[str, Any]]) -> None:
    frame = pl.DataFrame(rows, schema=_FRAME_SCHEMA)
    oks, errs = _frame_features("f")(frame)
    [(ref_oks, ref_errs)] = _features("f")([(e["account_id"], e) for e in frame.to_dicts()])
    got = pl.concat(oks) if oks else pl.DataFrame(schema=_FRAME_SCHEMA).select(_KEPT)
    assert got.columns[:4] == list(_KEPT) and got.height == len(ref_oks)
    assert got.select(_KEPT).rows() == [tuple(e[c] for c in _KEPT) for _, e in ref_oks]
    if ref_oks:
        vectors = got["features"].to_numpy()
        assert vectors.dtype == np.float32
        assert vectors.view(np.uint32).tolist() == [
            e["features"].view(np.uint32).tolist() for _, e in ref_oks
        ]
    assert list(map(_canon, errs)) == list(map(_canon, ref_errs))


@settings(max_examples=30, deadline=None)
@given(st.lists(_frame_rows(bad=False), min_size=1, max_size=40))
def test_a_frame_takes_the_columnar_pass_with_the_event_by_event_vectors(rows) -> None:
    assert feature_matrix(pl.DataFrame(rows, schema=_FRAME_SCHEMA)) is not None
    _frame_vs_rows(rows)


@settings(max_examples=50, deadline=None)
@given(st.lists(_frame_rows(bad=True), min_size=1, max_size=20))
def test_a_frame_with_bad_values_gives_the_event_by_event_rejections(rows) -> None:
    _frame_vs_rows(rows)


def test_the_example_data_as_frames_takes_the_columnar_pass() -> None:
    data = generate(600, n_accounts=80, seed=5)
    table = dict(data.accounts)
    rows = [
        {**t, **table[t["account_id"]]} for t in data.transactions if table.get(t["account_id"])
    ]
    frame = pl.DataFrame(rows, infer_schema_length=None)
    assert feature_matrix(frame) is not None
    _frame_vs_rows(frame.select(list(_FRAME_SCHEMA)).to_dicts())
