"""Bad data never stops a dataflow: every value, key and timestamp ends as an output, a rejection or late.

Hypothesis pushes values that are valid Python but no float (integers beyond
float range such as ``2**1100``, beyond 64 bits), NaN and infinities,
``None``, text, bytes, booleans, lists, dicts, complex and decimal numbers
and plain objects — as numeric fields, as keys and as timestamps — through
every numeric operator, on ``(key, event)`` rows and on polars frames (columns
of every dtype, including ``Object``, ``List``, ``Struct``, ``Decimal``, naive
``Datetime`` and missing columns). Each input carries an ``id``; the test
finds every id exactly once among the outputs, the ``errs`` records and the
``late`` records (``window_agg``: its counts plus rejections equal the
input). A crash of the dataflow fails the test.

A case that fails because of a bug in a file another helper owns is
``xfail(strict=True)`` with the finding, so the owner's fix turns it green.
"""

from __future__ import annotations

import decimal
import fractions
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import polars as pl
import pytest
from bytewax.dataflow import Dataflow, Stream
from bytewax.operators.windowing import TumblingWindower
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from streamml.operators import anomaly, featurize, infer, join

from streamml.errors import Rejected
from streamml.models import CallableModel

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
WIN = timedelta(seconds=30)
EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,  # the same examples every run: a strict xfail below cannot flip by chance
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: each probe is a Bytewax run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- values -------------------------------------------------------------------------------------

EXTREMES = [
    2**1100,
    -(2**1100),
    10**400,
    2**63,
    2**64 - 1,
    -(2**63) - 1,
    float("nan"),
    float("inf"),
]
numbers = st.one_of(
    st.floats(-1e6, 1e6),
    st.sampled_from(EXTREMES),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
)
anything = st.one_of(
    numbers,
    st.none(),
    st.booleans(),
    st.text(max_size=4),
    st.binary(max_size=4),
    st.lists(st.floats(allow_nan=True), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.complex_numbers(max_magnitude=1e3),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.fractions(max_denominator=7),
    st.builds(object),
)
good_times = st.datetimes(
    datetime(2025, 12, 31), datetime(2026, 1, 2), timezones=st.just(timezone.utc)
)
times = st.one_of(
    good_times,
    good_times,
    st.datetimes(datetime(1, 1, 1), datetime(9999, 12, 31), timezones=st.just(timezone.utc)),
    st.datetimes(datetime(2025, 12, 31), datetime(2026, 1, 2)),  # naive
    anything,
)
keys = st.one_of(st.sampled_from(["a", "b", "c"]), anything)


@st.composite
def row_items(draw: st.DrawFn) -> list[Any]:
    """``(key, event)`` pairs, each with one part drawn from anything (key, field, time, shape)."""
    items: list[Any] = []
    for i in range(draw(st.integers(1, 12))):
        bad = draw(st.sampled_from(["x", "x", "ts", "key", "missing", "item", "none"]))
        key = draw(keys) if bad == "key" else draw(st.sampled_from(["a", "b", "c"]))
        x = draw(st.one_of(numbers, anything)) if bad == "x" else draw(st.floats(-1e3, 1e3))
        event = {"id": i, "x": x, "ts": draw(times if bad == "ts" else good_times)}
        if bad == "missing":
            del event[draw(st.sampled_from(["x", "ts"]))]
        if bad != "item":
            items.append((key, event))
        else:
            items.append(
                draw(st.sampled_from([event, ("a", [i]), ("a", event, "extra"), [i]]))
            )  # unkeyed, an event that is no mapping, a triple, a list
    return items


def _series(name: str, values: list[Any], dtype: Any) -> pl.Series:
    return pl.Series(name, values, dtype=dtype, strict=False)


@st.composite
def column(draw: st.DrawFn, name: str, n: int) -> pl.Series | None:
    """One column of ``n`` rows of a drawn dtype, or None for a missing column."""
    kind = draw(
        st.sampled_from(
            ["f64", "f64", "i64", "u64", "str", "bool", "null", "object", "list", "struct"]
            + ["binary", "decimal", "datetime", "naive", "date", "missing"]
        )
    )
    vals = st.lists
    if kind == "f64":
        return _series(
            name, draw(vals(st.one_of(st.none(), st.floats()), min_size=n, max_size=n)), pl.Float64
        )
    if kind == "i64":
        ints = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))
        return _series(name, draw(vals(ints, min_size=n, max_size=n)), pl.Int64)
    if kind == "u64":
        return _series(
            name, draw(vals(st.integers(0, 2**64 - 1), min_size=n, max_size=n)), pl.UInt64
        )
    if kind == "str":
        return _series(
            name,
            draw(vals(st.one_of(st.none(), st.text(max_size=3)), min_size=n, max_size=n)),
            pl.String,
        )
    if kind == "bool":
        return _series(name, draw(vals(st.booleans(), min_size=n, max_size=n)), pl.Boolean)
    if kind == "null":
        return pl.Series(name, [None] * n, dtype=pl.Null)
    if kind == "object":
        return pl.Series(name, draw(vals(anything, min_size=n, max_size=n)), dtype=pl.Object)
    if kind == "list":
        lists = st.one_of(st.none(), st.lists(st.floats(allow_nan=True), max_size=3))
        return _series(name, draw(vals(lists, min_size=n, max_size=n)), pl.List(pl.Float64))
    if kind == "struct":
        return pl.Series(name, [{"a": i} for i in range(n)])
    if kind == "binary":
        return _series(name, draw(vals(st.binary(max_size=3), min_size=n, max_size=n)), pl.Binary)
    if kind == "decimal":
        decs = st.decimals(-1000, 1000, places=2)
        return _series(name, draw(vals(decs, min_size=n, max_size=n)), pl.Decimal(10, 2))
    if kind in ("datetime", "naive"):
        dts = vals(st.one_of(st.none(), good_times), min_size=n, max_size=n)
        series = _series(name, draw(dts), pl.Datetime("us", "UTC"))
        return series.dt.replace_time_zone(None) if kind == "naive" else series
    if kind == "date":
        return _series(name, [T0.date()] * n, pl.Date)
    return None


@st.composite
def frame_items(draw: st.DrawFn) -> list[Any]:
    """Frames whose ``k``, ``ts`` and ``x`` columns may hold anything (or be missing), and a non-frame."""
    items: list[Any] = []
    next_id = 0
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 6))
        cols = [pl.Series("id", range(next_id, next_id + n), dtype=pl.Int64)]
        next_id += n
        for name, good in (("k", None), ("ts", None), ("x", None)):
            if draw(st.integers(0, 2)) == 0:  # a well-typed column two times in three
                col = draw(column(name, n))
            else:
                col = good or _good_column(draw, name, n)
            if col is not None:
                cols.append(col)
        items.append(pl.DataFrame(cols))
    if draw(st.booleans()):
        items.append([next_id])  # not a frame
    return items


def _good_column(draw: st.DrawFn, name: str, n: int) -> pl.Series:
    if name == "k":
        return pl.Series("k", draw(st.lists(st.sampled_from(["a", "b"]), min_size=n, max_size=n)))
    if name == "ts":
        return _series(
            "ts", draw(st.lists(good_times, min_size=n, max_size=n)), pl.Datetime("us", "UTC")
        )
    return _series("x", draw(st.lists(st.floats(-1e3, 1e3), min_size=n, max_size=n)), pl.Float64)


# -- the same nasties every run, beside what hypothesis draws ------------------------------------

NASTY_VALUES = [
    *EXTREMES,
    -float("inf"),
    decimal.Decimal("1e999"),
    decimal.Decimal("NaN"),
    fractions.Fraction(1, 3),
    complex(1, 1),
    None,
    "1.5",
    b"1",
    True,
    [1.0],
    {"a": 1},
    object(),
]
NASTY_TIMES = [
    datetime(2026, 1, 1),  # naive
    datetime.max.replace(tzinfo=timezone.utc),
    datetime.min.replace(tzinfo=timezone.utc),
    0,
    2**1100,
    "2026-01-01T00:00:00Z",
    None,
    float("nan"),
    T0.date(),
]
NASTY_KEYS = [None, 1, 2**1100, -(2**64), b"a", 1.5, ("a",), True, object()]


def _nasty_rows() -> list[Any]:
    ts = [T0 + timedelta(seconds=i) for i in range(len(NASTY_VALUES))]
    items: list[Any] = [
        ("a", {"id": i, "x": v, "ts": t}) for i, (v, t) in enumerate(zip(NASTY_VALUES, ts))
    ]
    n = len(items)
    items += [("b", {"id": n + i, "x": 1.0, "ts": t}) for i, t in enumerate(NASTY_TIMES)]
    n = len(items)
    items += [(k, {"id": n + i, "x": 1.0, "ts": T0}) for i, k in enumerate(NASTY_KEYS)]
    n = len(items)
    items += [{"id": n, "x": 1.0, "ts": T0}, ("a", [n + 1]), ("a", {"id": n + 2}, "extra"), [n + 3]]
    return items


def _nasty_frames() -> list[Any]:
    n = 3
    frames: list[Any] = []
    for i, (k, ts, x) in enumerate(
        [
            ([None, "a", "b"], None, pl.Series("x", [1.0, None, float("nan")])),
            (pl.Series("k", [2**64 - 1, 0, 1], dtype=pl.UInt64), None, None),
            (None, pl.Series("ts", [0, 2**62, -(2**62)], dtype=pl.Int64), None),
            (None, pl.Series("ts", [T0.replace(tzinfo=None)] * n), None),
            (None, pl.Series("ts", ["2026-01-01"] * n), None),
            (None, None, pl.Series("x", [2**1100, "x", None], dtype=pl.Object)),
            (None, None, pl.Series("x", [[1.0], None, []], dtype=pl.List(pl.Float64))),
            (None, None, pl.Series("x", ["1", "2", None])),
            (None, None, pl.Series("x", [2**64 - 1, 0, 1], dtype=pl.UInt64)),
            (None, None, pl.Series("x", [decimal.Decimal("1.5")] * n, dtype=pl.Decimal(10, 2))),
            (None, None, pl.Series("x", [True, False, None])),
            (pl.Series("k", [b"a", b"b", None]), None, None),
            (pl.Series("k", [1.5, 2.5, None]), None, None),
        ]
    ):
        cols = {
            "id": pl.Series("id", range(i * n, (i + 1) * n), dtype=pl.Int64),
            "k": k if isinstance(k, pl.Series) else pl.Series("k", k or ["a", "b", "a"]),
            "ts": ts if ts is not None else pl.Series("ts", [T0] * n),
            "x": x if x is not None else pl.Series("x", [1.0, 2.0, 3.0]),
        }
        frames.append(pl.DataFrame(list(cols.values())))
    frames.append(pl.DataFrame({"id": [100], "k": ["a"], "ts": [T0]}))  # no x column
    frames.append(pl.DataFrame({"id": [101], "x": [1.0], "ts": [T0]}))  # no key column
    frames.append(pl.DataFrame({"id": [102], "k": ["a"], "x": [1.0]}))  # no time column
    frames.append([103])  # not a frame
    return frames


# -- accounting ---------------------------------------------------------------------------------


def _ids_in(items: list[Any]) -> Counter:
    ids: Counter = Counter()
    for item in items:
        if isinstance(item, pl.DataFrame):
            ids.update(item.get_column("id").to_list())
        else:
            ids[_id_of(item)] += 1
    return ids


def _id_of(original: Any) -> Any:
    """The ``id`` an input, a rejection's original or an output row carries."""
    if isinstance(original, dict):
        return original["id"]
    if isinstance(original, list):
        return original[0]
    if isinstance(original, tuple):
        if len(original) == 2 and isinstance(original[1], list):
            return original[1][0]
        return _id_of(original[1])
    raise AssertionError(f"no id in {original!r}")


def _ids_out(oks: list[Any]) -> Counter:
    ids: Counter = Counter()
    for item in oks:
        if isinstance(item, pl.DataFrame):
            ids.update(item.get_column("id").to_list())
        else:
            ids[_id_of(item)] += 1
    return ids


def _run(
    items: list[Any], build: Callable[[Stream], Any]
) -> tuple[list, list[Rejected], list[Rejected]]:
    flow = Dataflow("bad_data")
    out = build(op.input("in", flow, TestingSource(items)))
    oks: list = []
    errs: list = []
    late: list = []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    if hasattr(out, "late"):
        op.output("late", out.late, TestingSink(late))
    run_main(flow)
    for r in (*errs, *late):
        assert isinstance(r, Rejected) and r.reason, r
    return oks, errs, late


def _assert_each_input_ends_once(items: list[Any], build: Callable[[Stream], Any]) -> None:
    oks, errs, late = _run(items, build)
    ended = _ids_out(oks) + Counter(_id_of(r.original) for r in (*errs, *late))
    assert ended == _ids_in(items)


def _ts(event: Any) -> Any:
    return event["ts"]


# -- operators: (name, rows builder, frames builder) ----------------------------------------------

MODEL = CallableModel(lambda x: x.sum(axis=1), outputs="score", shape=(1,), version="v1")
SCALER = featurize.ScalerParams(fields=("x",), mean=(1.0,), scale=(2.0,))
SCHEMA = featurize.FeatureSchema([featurize.Feature("x", default=None)])


def _rolling(frames: bool) -> Callable[[Stream], Any]:
    where = {"key": "k", "timestamp": "ts"} if frames else {"timestamp": _ts}
    return lambda up: featurize.rolling(
        "roll", up, **where, fields=["x"], aggregates=["mean", "max"], window=WIN, shards=2
    )


def _online_scale(frames: bool) -> Callable[[Stream], Any]:
    where = {"key": "k"} if frames else {}
    return lambda up: featurize.online_scale("scale", up, **where, fields=["x"], shards=2)


def _standard_scale(frames: bool) -> Callable[[Stream], Any]:
    return lambda up: featurize.standard_scale("scale", up, params=SCALER)


def _assemble(frames: bool) -> Callable[[Stream], Any]:
    return lambda up: featurize.assemble("vec", up, schema=SCHEMA)


def _infer(frames: bool) -> Callable[[Stream], Any]:
    where = {"key": "k", "shards": 2} if frames else {"shards": 2}
    return lambda up: infer.infer(
        "model", up, MODEL, inputs=["x"], max_wait=timedelta(0), overlap=False, **where
    )


def _score(frames: bool) -> Callable[[Stream], Any]:
    where = {"key": "k", "timestamp": "ts"} if frames else {"timestamp": _ts}
    scorer = anomaly.ZScore("x", window=WIN, min_points=2)
    return lambda up: anomaly.score("score", up, **where, scorer=scorer, shards=2)


ONE_TO_ONE = {
    "rolling": _rolling,
    "online_scale": _online_scale,
    "standard_scale": _standard_scale,
    "assemble": _assemble,
    "infer": _infer,
    "anomaly.score": _score,
}


@pytest.mark.parametrize("name", ONE_TO_ONE)
@EXAMPLES
@given(items=row_items())
@example(items=_nasty_rows())
def test_rows_every_input_ends_once(name: str, items: list[Any]) -> None:
    _assert_each_input_ends_once(items, ONE_TO_ONE[name](False))


@pytest.mark.parametrize("name", list(ONE_TO_ONE))
@EXAMPLES
@given(items=frame_items())
@example(items=_nasty_frames())
def test_frames_every_row_ends_once(name: str, items: list[Any]) -> None:
    _assert_each_input_ends_once(items, ONE_TO_ONE[name](True))


# -- operators whose outputs are not one per input ------------------------------------------------


def _window_agg(frames: bool) -> Callable[[Stream], Any]:
    where = {"key": "k", "timestamp": "ts"} if frames else {"timestamp": _ts}
    windower = TumblingWindower(length=WIN, align_to=T0)
    return lambda up: featurize.window_agg(
        "win", up, **where, windower=windower, fields={"x": ["count", "mean"]}
    )


def _counted(oks: list[Any]) -> int:
    total = 0
    for item in oks:
        rows = item.to_dicts() if isinstance(item, pl.DataFrame) else [item[1]]
        total += sum(int(v) for row in rows for k, v in row.items() if k.startswith("x_count"))
    return total


def _window_agg_check(items: list[Any], frames: bool) -> None:
    """Windows aggregate rows: their counts plus the rejections equal the input."""
    oks, errs, late = _run(items, _window_agg(frames))
    assert _counted(oks) + len(errs) + len(late) == sum(_ids_in(items).values())


def _windows(frames: bool) -> Callable[[Stream], Any]:
    where = {"key": "k", "timestamp": "ts"} if frames else {"timestamp": _ts}
    return lambda up: anomaly.anomaly_windows(
        "windows", up, **where, score="x", threshold=anomaly.FixedThreshold(3.0), shards=2
    )


def _windows_check(items: list[Any], frames: bool) -> None:
    """Windows summarise points: the flow finishes, and no input is rejected twice."""
    flow = Dataflow("bad_windows")
    out = _windows(frames)(op.input("in", flow, TestingSource(items)))
    rejected: list[Rejected] = []
    op.output("errs", op.merge("rejected", out.errs, out.late), TestingSink(rejected))
    op.output("rest", op.merge("rest_all", out.windows, out.opened), TestingSink([]))
    run_main(flow)
    ids = Counter(_id_of(r.original) for r in rejected)
    assert not ids - _ids_in(items)


def _interval_check(items: list[Any], frames: bool) -> None:
    """A left outer self-join: every left input is in a joined row, rejected or late."""
    where = {"key": "k", "left_ts": "ts"} if frames else {"left_ts": _ts}
    flow = Dataflow("bad_join")
    up = op.input("in", flow, TestingSource(items))
    out = join.interval_join("join", up, up, **where, lower=-WIN, upper=WIN, how="left", shards=2)
    oks: list = []
    rejected: list[Rejected] = []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", op.merge("rejected", out.errs, out.late), TestingSink(rejected))
    run_main(flow)
    assert set(_ids_in(items)) <= set(_ids_out(oks)) | {_id_of(r.original) for r in rejected}


def _asof_check(items: list[Any], frames: bool) -> None:
    """A self as-of join on rows: every event is joined (a miss takes the default), rejected or late."""
    flow = Dataflow("bad_asof")
    up = op.input("in", flow, TestingSource(items))
    out = join.asof_join(
        "asof", up, up, ts=_ts, table_ts=_ts, merge=lambda e, _row: e, default={}, shards=2
    )
    oks: list = []
    rejected: list[Rejected] = []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", op.merge("rejected", out.errs, out.late), TestingSink(rejected))
    run_main(flow)
    assert set(_ids_in(items)) <= set(_ids_out(oks)) | {_id_of(r.original) for r in rejected}


def _label_check(items: list[Any], frames: bool) -> None:
    """A self label join (each input a regression prediction and its own label): every input is
    labelled, unlabelled, rejected or late."""
    where = {"key": "k", "ts": "ts"} if frames else {"ts": _ts}
    flow = Dataflow("bad_label")
    up = op.input("in", flow, TestingSource(items))
    out = join.label_join(
        "label", up, up, **where, max_delay=WIN, window=WIN, task="regression",
        prediction="x", label="x", shards=2,
    )  # fmt: skip
    oks: list = []
    rejected: list[Rejected] = []
    op.output("oks", op.merge("outcomes", out.labelled, out.unlabelled), TestingSink(oks))
    op.output("errs", op.merge("rejected", out.errs, out.late), TestingSink(rejected))
    op.output("metrics", out.metrics, TestingSink([]))
    run_main(flow)
    assert set(_ids_in(items)) <= set(_ids_out(oks)) | {_id_of(r.original) for r in rejected}


def _inactivity_check(items: list[Any], frames: bool) -> None:
    """Silences absorb rows: each input is taken in, rejected or late, none twice; an input taken
    in (rows) is a (str key, event) pair with an aware time; every alert is ``after`` past its
    last row."""
    where = {"key": "k", "timestamp": "ts"} if frames else {"timestamp": _ts}
    flow = Dataflow("bad_inactivity")
    up = op.input("in", flow, TestingSource(items))
    out = anomaly.inactivity("silent", up, **where, after=WIN, lateness=WIN)
    alerts: list = []
    rejected: list[Rejected] = []
    op.output("alerts", out.alerts, TestingSink(alerts))
    op.output("errs", op.merge("rejected", out.errs, out.late), TestingSink(rejected))
    run_main(flow)
    ids = Counter(_id_of(r.original) for r in rejected)
    assert not ids - _ids_in(items)
    for alert in alerts:
        body = alert if frames else alert[1]
        assert body["silent_at"] - body["last_seen"] == WIN, alert
    for item in items if not frames else []:
        if not ids[_id_of(item)]:
            key, event = item
            assert isinstance(key, str) and isinstance(event["ts"], datetime), item
            assert event["ts"].tzinfo is not None, item


CHECKS = {
    "window_agg": _window_agg_check,
    "anomaly_windows": _windows_check,
    "interval_join": _interval_check,
    "asof_join": _asof_check,
    "label_join": _label_check,
    "inactivity": _inactivity_check,
}


@pytest.mark.parametrize(
    "name",
    [
        "window_agg",
        "anomaly_windows",
        "interval_join",
        "asof_join",
        "label_join",
        "inactivity",
    ],
)
@EXAMPLES
@given(items=row_items())
@example(items=_nasty_rows())
def test_rows_through_aggregating_operators(name: str, items: list[Any]) -> None:
    CHECKS[name](items, False)


@pytest.mark.parametrize(
    "name",
    [
        "window_agg",
        "anomaly_windows",
        "interval_join",
        "label_join",
        "inactivity",
    ],
)
@EXAMPLES
@given(items=frame_items())
@example(items=_nasty_frames())
def test_frames_through_aggregating_operators(name: str, items: list[Any]) -> None:
    CHECKS[name](items, True)


def test_a_join_holding_a_frame_of_python_objects_goes_on() -> None:
    frame = pl.DataFrame(
        [
            pl.Series("id", [0, 1], dtype=pl.Int64),
            pl.Series("k", ["a", "a"]),
            pl.Series("ts", [T0, T0 + timedelta(days=1)]),
            pl.Series("x", [2**70, 1.5], dtype=pl.Object),
        ]
    )
    _interval_check([frame], True)
