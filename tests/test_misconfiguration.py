"""Misconfiguration is refused when the flow is built, with a message naming the argument and what to give.

Each case builds one operator with one wrong argument and expects a
``ValueError`` at build time whose message names the argument (and, where
it helps, an example of the right value) — not a pass that turns every
event into a dead letter, nor a ``TypeError`` from deep inside. Cases in
files another helper owns that still fail are ``xfail(strict=True)`` with the
finding, so the owner's fix turns them green.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
import pytest
from bytewax.dataflow import Dataflow, Stream
from bytewax.testing import TestingSink, TestingSource, run_main
from streamml.operators import anomaly, featurize, infer, join

from streamml.models import CallableModel, OnnxModel

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
MODEL = CallableModel(lambda x: x.sum(axis=1), outputs="score", shape=(1,), version="v1")
WIN = timedelta(seconds=60)


def _rolling(**kw: Any) -> Callable[[Stream], Any]:
    args = {"key": "k", "timestamp": "ts", "fields": ["x"], "window": WIN, "shards": 1} | kw
    return lambda up: featurize.rolling("op", up, **args)


def _windows(**kw: Any) -> Callable[[Stream], Any]:
    args = {"key": "k", "timestamp": "ts", "score": "x", "threshold": anomaly.FixedThreshold(3.0)}
    return lambda up: anomaly.anomaly_windows("op", up, **(args | kw))


def _score(**kw: Any) -> Callable[[Stream], Any]:
    args = {"key": "k", "timestamp": "ts", "scorer": anomaly.ZScore("x", window=WIN)}
    return lambda up: anomaly.score("op", up, **(args | kw))


def _infer(**kw: Any) -> Callable[[Stream], Any]:
    args = {"model": MODEL, "inputs": ["x"]} | kw
    model = args.pop("model")
    return lambda up: infer.infer("op", up, model, **args)


def _interval(**kw: Any) -> Callable[[Stream], Any]:
    args = {"left_ts": "ts", "key": "k", "lower": -WIN, "upper": WIN} | kw
    return lambda up: join.interval_join("op", up, up, **args)


def _window_agg(**kw: Any) -> Callable[[Stream], Any]:
    from bytewax.operators.windowing import TumblingWindower

    args = {
        "key": "k",
        "timestamp": "ts",
        "fields": ["x"],
        "windower": TumblingWindower(length=WIN, align_to=T0),
    } | kw
    return lambda up: featurize.window_agg("op", up, **args)


def _online_scale(**kw: Any) -> Callable[[Stream], Any]:
    args = {"key": "k", "fields": ["x"], "shards": 1} | kw
    return lambda up: featurize.online_scale("op", up, **args)


def _owned_elsewhere(finding: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=finding)


CASES = [
    # -- featurize -------------------------------------------------------------------------------
    pytest.param(
        _rolling(fields="xy"),
        "fields",
        id="rolling-fields-str",
    ),
    pytest.param(
        _rolling(window=60),
        "window",
        id="rolling-window-int",
    ),
    pytest.param(
        _rolling(max_delay=2),
        "max_delay",
        id="rolling-max_delay-int",
    ),
    pytest.param(_rolling(key=None, timestamp="ts"), "timestamp", id="rolling-rows-timestamp-str"),
    pytest.param(
        _rolling(shards="2"),
        "shards",
        id="rolling-shards-str",
    ),
    pytest.param(
        _window_agg(fields="xy"),
        "fields",
        id="window_agg-fields-str",
    ),
    pytest.param(_online_scale(fields="xy"), "fields", id="online_scale-fields-str"),
    pytest.param(
        _online_scale(ttl=3600),
        "ttl",
        id="online_scale-ttl-int",
    ),
    # -- infer ---------------------------------------------------------------------------------
    pytest.param(_infer(model=OnnxModel), "create an instance", id="infer-model-class"),
    pytest.param(_infer(max_wait=10), "max_wait must be a datetime.timedelta", id="infer-wait-int"),
    pytest.param(_infer(max_batch=True), "max_batch", id="infer-batch-bool"),
    pytest.param(_infer(shards="2"), "shards", id="infer-shards-str"),
    pytest.param(_infer(copies=1.5), "copies must be an int >= 1", id="infer-copies-float"),
    pytest.param(_infer(key=3), "key", id="infer-key-int"),
    pytest.param(_infer(loader="onnx"), "loader must be a function", id="infer-loader-str"),
    # -- anomaly -------------------------------------------------------------------------------
    pytest.param(_windows(timestamp=None), "key and timestamp name columns", id="windows-ts-none"),
    pytest.param(
        _windows(key=None, timestamp="ts"), "timestamp=lambda e: e['ts']", id="windows-rows-ts-str"
    ),
    pytest.param(
        _windows(lateness=5), "lateness must be a datetime.timedelta", id="windows-lateness-int"
    ),
    pytest.param(_windows(gap=60), "gap must be a datetime.timedelta", id="windows-gap-int"),
    pytest.param(_windows(min_points="3"), "min_points must be an int", id="windows-points-str"),
    pytest.param(_windows(shards=0), "shards must be an int >= 1", id="windows-shards-0"),
    pytest.param(_windows(alerts="no"), "alerts must be True or False", id="windows-alerts-str"),
    pytest.param(
        _windows(threshold=3.0), "threshold must be FixedThreshold", id="windows-threshold-float"
    ),
    pytest.param(
        _windows(threshold=anomaly.FixedThreshold),
        "create an instance",
        id="windows-threshold-class",
    ),
    pytest.param(_windows(ttl=3600), "ttl must be a datetime.timedelta", id="windows-ttl-int"),
    pytest.param(
        _windows(max_future=-WIN), "max_future must be a timedelta >= 0", id="windows-future"
    ),
    pytest.param(_score(scorer="zscore"), "scorer must be ZScore or Ewma", id="score-scorer-str"),
    pytest.param(_score(into=""), "into must be a field or column name", id="score-into-empty"),
    # -- joins (operators/join/*, another helper's files) --------------------------------------
    pytest.param(
        _interval(lower=-60), "lower must be a datetime.timedelta", id="interval-lower-int"
    ),
    pytest.param(
        _interval(lateness=5), "lateness must be a datetime.timedelta", id="interval-lateness-int"
    ),
    pytest.param(_interval(ttl=timedelta(0)), "ttl must be a timedelta > 0", id="interval-ttl-0"),
    pytest.param(_interval(shards="2"), "shards must be an int >= 1", id="interval-shards-str"),
    pytest.param(
        lambda up: join.enrich("op", up, up, max_wait=5),
        "max_wait must be a datetime",
        id="enrich-wait",
    ),
    pytest.param(
        lambda up: join.enrich("op", up, up, shards=0), "shards must be an int", id="enrich-0"
    ),
    pytest.param(
        lambda up: join.enrich("op", up, up, wait_for_bootstrap="no"),
        "wait_for_bootstrap must be True or False",
        id="enrich-bootstrap-str",
    ),
]


@pytest.mark.parametrize(("build", "says"), CASES)
def test_refused_at_build_with_a_message_that_says_what_to_give(
    build: Callable[[Stream], Any], says: str
) -> None:
    flow = Dataflow("misconfigured")
    up = op.input("in", flow, TestingSource([]))
    with pytest.raises(ValueError, match=re.escape(says)):
        build(up)


@pytest.mark.parametrize(
    ("scorer", "says"),
    [
        (lambda: anomaly.ZScore("x", window=60), "window must be a datetime.timedelta"),
        (lambda: anomaly.ZScore("x", window=WIN, min_points=1.5), "min_points must be an int >= 2"),
        (lambda: anomaly.Ewma("x", half_life=10), "half_life must be a datetime.timedelta"),
        (lambda: anomaly.FixedThreshold("4"), "open_above must be a finite number"),
        (
            lambda: anomaly.FixedThreshold(4.0, close_below=float("nan")),
            "close_below must be a finite",
        ),
        (lambda: anomaly.QuantileThreshold(window=3600), "window must be a datetime.timedelta"),
        (lambda: anomaly.QuantileThreshold(open_q="0.9"), "open_q must be a finite number"),
    ],
)
def test_scorers_and_thresholds_are_checked_when_made(scorer: Callable[[], Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        scorer()


@pytest.mark.parametrize(
    "build",
    [
        lambda up: anomaly.anomaly_windows(
            "op", up, timestamp=lambda e: e["ts"], score="x", threshold=anomaly.FixedThreshold(3.0)
        ),
        lambda up: infer.infer("op", up, MODEL, inputs=["x"], max_wait=timedelta(0)),
    ],
    ids=["anomaly_windows", "infer"],
)
def test_an_unkeyed_stream_into_a_keyed_operator_is_rejected_with_how_to_key_it(
    build: Callable[[Stream], Any],
) -> None:
    """Bytewax streams carry no item type, so this is found on the first items: each one is a BadItem."""
    events = [{"k": "a", "ts": T0, "x": 1.0}, {"k": "b", "ts": T0, "x": 2.0}]
    flow = Dataflow("unkeyed")
    out = build(op.input("in", flow, TestingSource(events)))
    errs: list = []
    op.output("errs", out.errs, TestingSink(errs))
    others = [getattr(out, f) for f in ("oks", "windows", "opened", "late") if hasattr(out, f)]
    op.output("rest", op.merge("all", *others), TestingSink([]))
    run_main(flow)
    assert [r.error_type for r in errs] == ["BadItem", "BadItem"]
    assert all("op.key_on" in r.reason and "key=" in r.reason for r in errs)


def test_a_model_returning_too_few_rows_says_what_it_returned_and_what_was_expected() -> None:
    shrinking = CallableModel(
        lambda x: x.sum(axis=1)[:0], outputs="score", shape=(1,), version="v1"
    )
    flow = Dataflow("shrinks")
    up = op.input("in", flow, TestingSource([pl.DataFrame({"x": [1.0]})]))
    out = infer.infer("score", up, shrinking, inputs=["x"], max_wait=timedelta(0))
    oks: list = []
    errs: list = []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    assert oks == [] and [r.error_type for r in errs] == ["ModelError"]
    reason = errs[0].reason
    assert "output 'score'" in reason and "shape (0,)" in reason
    assert "0 rows for a batch of 1 input rows" in reason and "one row per input row" in reason
    assert np.isclose(errs[0].original["x"], 1.0)
