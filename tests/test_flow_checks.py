"""Every rejection stream of a flow ends somewhere: check_flow refuses one left unread, collect_rejections gathers them."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import bytewax.operators as op
import polars as pl
import pytest
from bytewax.dataflow import Dataflow, Stream, operator
from bytewax.operators.windowing import TumblingWindower
from bytewax.testing import TestingSink, TestingSource, run_main
from streamml.operators import anomaly, featurize, infer, join

from streamml import kafka
from streamml.errors import Rejected
from streamml.flow import (
    UnconsumedRejections,
    check_flow,
    collect_rejections,
    unconsumed_rejections,
)
from streamml.frames import to_frames
from streamml.models import CallableModel
from streamml.serde import JsonSerde

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _frames(flow: Dataflow, frames: list) -> Stream:
    return op.input("in", flow, TestingSource(frames))


def _rolling(up: Stream) -> featurize.TimedFeaturesOut:
    return featurize.rolling(
        "roll",
        up,
        key="k",
        timestamp="ts",
        fields=["x"],
        aggregates=["mean"],
        window=timedelta(seconds=10),
        max_delay=timedelta(seconds=1),
        shards=1,
    )


@dataclass(frozen=True)
class WrappedOut:
    oks: Stream
    errs: Stream[Rejected]


@operator
def wrapped(step_id: str, up: Stream) -> WrappedOut:
    """An operator that reads its inner errs itself and hands them on."""
    inner = to_frames("frames", up)
    op.inspect("peek", inner.errs)  # a reader, but inside the operator
    return WrappedOut(inner.oks, inner.errs)


@operator
def negatives(step_id: str, up: Stream[float]) -> Stream[Rejected]:
    """A user's own operator typed as returning rejections."""
    return op.filter_map("neg", up, lambda x: Rejected(step_id, "Neg", "< 0", x) if x < 0 else None)


def test_an_unread_errs_or_late_stream_is_refused_with_step_port_and_fix() -> None:
    flow = Dataflow("refuse")
    feats = _rolling(_frames(flow, []))
    op.output("out", feats.oks, TestingSink([]))
    op.output("errs", feats.errs, TestingSink([]))
    with pytest.raises(UnconsumedRejections) as caught:
        check_flow(flow)
    message = str(caught.value)
    assert "'refuse.roll' port 'late'" in message
    assert "port 'errs'" not in message
    assert "collect_rejections" in message and "dead_letter_sink" in message
    assert [(p.step_id, p.port) for p in caught.value.ports] == [("refuse.roll", "late")]
    assert isinstance(caught.value, ValueError)  # misconfiguration is a ValueError at build


def test_a_kafka_sinks_rejections_and_a_users_typed_operator_are_found() -> None:
    flow = Dataflow("typed")
    nums = op.input("in", flow, TestingSource([1.0]))
    negatives("check", nums)
    kafka.sink("out", nums, brokers="127.0.0.1:1", topic="t", value_serde=JsonSerde())
    found = {(p.step_id, p.port) for p in unconsumed_rejections(flow)}
    assert found == {("typed.check", "down"), ("typed.out", "down")}


def test_an_operator_reading_its_own_errs_inside_still_leaves_them_unread_outside() -> None:
    """Only a step outside the emitting operator counts as a reader; the outer port is named once."""

    flow = Dataflow("wrap")
    out = wrapped("w", op.input("in", flow, TestingSource([{"x": 1.0}])))
    op.output("oks", out.oks, TestingSink([]))
    assert [(p.step_id, p.port) for p in unconsumed_rejections(flow)] == [("wrap.w", "errs")]
    op.output("errs", out.errs, TestingSink([]))
    assert check_flow(flow) is flow


def test_collect_rejections_needs_a_stream() -> None:
    with pytest.raises(ValueError, match="at least one stream"):
        collect_rejections("all")


def test_every_input_ends_as_output_rejection_or_late_through_one_collect_call() -> None:
    """rolling -> infer -> anomaly windows: nothing wired by hand but one collect call, nothing lost."""
    good = pl.DataFrame(
        {
            "k": ["a", "a", "b", "a", None, "b"],
            "ts": [T0 + timedelta(seconds=s) for s in (0, 5, 5, 1, 6, 7)],  # a@1 is late
            "x": [1.0, 2.0, 3.0, 4.0, 5.0, float("nan")],  # null key, NaN
        }
    )
    flow = Dataflow("collect_all")
    feats = _rolling(_frames(flow, [good, "not a frame"]))
    model = CallableModel(lambda x: x.sum(axis=1), outputs="score", shape=(1,), version="v1")
    scored = infer.infer("score", feats.oks, model, inputs=["x_mean_10s"], max_wait=timedelta(0))
    found = anomaly.anomaly_windows(
        "windows",
        scored.oks,
        key="k",
        timestamp="ts",
        score="score",
        threshold=anomaly.FixedThreshold(100.0),
        shards=1,
    )
    scores, dead = [], []
    op.output("scores", scored.oks, TestingSink(scores))
    op.output("windows_out", found.windows, TestingSink([]))
    op.output("opened", found.opened, TestingSink([]))
    with pytest.raises(UnconsumedRejections):
        check_flow(flow)
    op.output("dead", collect_rejections("rejections", feats.errs), TestingSink(dead))
    run_main(check_flow(flow))
    kinds = sorted((r.step_id.rsplit(".", 1)[-1], r.error_type) for r in dead)
    assert ("roll", "Late") in kinds
    assert sum(len(f) for f in scores) + sum(1 for r in dead if r.original != "not a frame") == 6
    assert {r.error_type for r in dead} >= {"BadItem", "BadKey", "NonFinite", "Late"}
    assert unconsumed_rejections(flow) == []


def _ts(event: dict) -> datetime:
    return event["ts"]


_BUILDS = {
    "rolling": lambda up: _rolling(up),
    "infer": lambda up: infer.infer(
        "op", up, CallableModel(lambda x: x.sum(axis=1), outputs="s", shape=(1,)), inputs=["x"]
    ),
    "anomaly_windows": lambda up: anomaly.anomaly_windows(
        "op", up, key="k", timestamp="ts", score="x", threshold=anomaly.FixedThreshold(3.0)
    ),
    "anomaly.score": lambda up: anomaly.score(
        "op", up, key="k", timestamp="ts", scorer=anomaly.ZScore("x", window=timedelta(seconds=9))
    ),
    "window_agg": lambda up: featurize.window_agg(
        "op",
        up,
        key="k",
        timestamp="ts",
        windower=TumblingWindower(length=timedelta(seconds=9), align_to=T0),
        fields=["x"],
    ),
    "online_scale": lambda up: featurize.online_scale("op", up, key="k", fields=["x"]),
    "interval_join": lambda up: join.interval_join(
        "op", up, up, key="k", left_ts="ts", lower=-timedelta(seconds=1), upper=timedelta(0)
    ),
    "asof_join": lambda up: join.asof_join("op", up, up, ts=_ts, table_ts=_ts),
    "label_join": lambda up: join.label_join(
        "op", up, up, ts=_ts, max_delay=timedelta(seconds=1), window=timedelta(seconds=9)
    ),
    "drift": lambda up: join.drift(
        "op", up, value=lambda e: e["x"], ts=_ts, window=timedelta(seconds=9), reference=[0.0, 1.0]
    ),
    "enrich": lambda up: join.enrich("op", up, up, key="k"),
}


@pytest.mark.parametrize("name", list(_BUILDS))
def test_no_operator_leaves_an_inner_rejection_stream_unread(name: str) -> None:
    """With every output port connected, check_flow passes: no operator drops rejections inside."""
    flow = Dataflow("inner")
    out = _BUILDS[name](op.input("in", flow, TestingSource([])))
    for field in dataclasses.fields(out):
        stream = getattr(out, field.name)
        if isinstance(stream, Stream):
            op.output(f"out_{field.name}", stream, TestingSink([]))
    assert check_flow(flow) is flow


_PUBLIC_OPERATOR_MODULES = (
    "streamml.kafka",
    "streamml.frames",
    "streamml.operators.featurize",
    "streamml.operators.infer",
    "streamml.operators.anomaly",
    "streamml.operators.join",
)


def _operators() -> list[tuple[str, typing.Any]]:
    found = []
    for module_name in _PUBLIC_OPERATOR_MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            fn = getattr(module, name)
            if inspect.isfunction(fn) and hasattr(fn, "__wrapped__"):
                found.append((f"{module_name}.{name}", fn))
    return found


@pytest.mark.parametrize(("name", "fn"), _operators(), ids=[n for n, _ in _operators()])
def test_every_errs_and_late_port_is_typed_so_the_check_sees_it(name: str, fn: typing.Any) -> None:
    ret = typing.get_type_hints(fn).get("return")
    if not (isinstance(ret, type) and dataclasses.is_dataclass(ret)):
        return
    hints = typing.get_type_hints(ret)
    for field in dataclasses.fields(ret):
        if field.name in ("errs", "late"):
            assert hints[field.name] == Stream[Rejected], (
                f"{name}: {field.name} is {hints[field.name]}"
            )
