"""Anomaly operators routed by shard: results independent of shards, batch and frame cut points,
the frame path equal to the row path, the shard state against one state per key, and recovery."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any

import bytewax.operators as op
import polars as pl
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators._core.columns import check_frame
from streamml.operators._core.keys import frame_sharder
from streamml.operators.anomaly import (
    FixedThreshold,
    QuantileThreshold,
    ZScore,
    _engine,
    anomaly_windows,
    score,
)
from streamml.operators.anomaly import scoring as scoring_mod
from streamml.operators.anomaly import windows as windows_mod

from streamml.errors import Rejected

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
SEC = timedelta(seconds=1)
KEYS = ["a", "b", "c", "d", "e"]


def _by_key(kvs: list[tuple[Any, Any]]) -> dict[Any, list[Any]]:
    """Outputs grouped by key, each key's in emission order (the order across keys is Bytewax's)."""
    out: dict[Any, list[Any]] = {}
    for key, v in kvs:
        out.setdefault(key, []).append(v)
    return out


def _family(kw: dict[str, Any]) -> Any:
    if kw.get("op") == "score":
        return scoring_mod._Family(kw["score"], "score")
    score_ = kw["score"]
    rules = windows_mod._WindowRules(
        kw["min_points"],
        0,
        kw["cooldown"] // timedelta(microseconds=1),
        kw["gap"] // timedelta(microseconds=1),
        kw["max_duration"] // timedelta(microseconds=1),
        True,
    )
    scorer = None if isinstance(score_, str) else score_
    return windows_mod._Family(
        rules, kw["threshold"], scorer, score_ + "_field" if scorer is None else ""
    )


def drive(
    batches: list[Any], *, shards: int, frames: bool, now: list[float] | None = None, **kw: Any
) -> dict[str, dict[Any, list]]:
    """Route each batch and run the shard states as Bytewax would, on a frozen wall clock.

    Returns each output stream's items by key (records by their ``key``;
    rejections by the key of their original row), each key's in order.
    """
    now = now or [1e9]
    family = _family(kw)
    fields = (kw["score"],) if isinstance(kw["score"], str) else kw["score"].fields
    timing = _engine.check_timing(
        "drive", lateness=kw["lateness"], span=SEC, ttl=None, max_future=None, fields=fields
    )
    if frames:
        check = partial(check_frame, step_id="drive", timestamp="t", fields=fields)
        route = frame_sharder("drive", key="key", shards=shards, check=check)
    else:
        route = _engine.shard_rows("drive", shards)
    states: dict[str, _engine.Shard] = {}
    names = (
        ["oks", "errs", "late"]
        if kw.get("op") == "score"
        else ["windows", "opened", "errs", "late"]
    )
    out: dict[str, list] = {name: [] for name in names}

    def collect(lists: list[list]) -> None:
        for name, items in zip(names, lists):
            out[name].extend(items)

    for batch in batches:
        for item in route([batch] if frames else batch):
            if isinstance(item, Rejected):
                out["errs"].append(item)
                continue
            sid, part = item
            if sid not in states:
                io = (
                    _engine.FrameInput(timing, "key", "t")
                    if frames
                    else _engine.RowInput(timing, lambda e: e["t"])
                )
                states[sid] = _engine.Shard(family, timing, io, None, clock=lambda: now[0])
            collect(states[sid].on_batch([part])[0][0])
    for shard in states.values():
        collect(shard.on_eof()[0][0])
    result: dict[str, dict[Any, list]] = {}
    for name, items in out.items():
        pairs = []
        for x in items:
            if isinstance(x, Rejected):
                row = x.original[1] if isinstance(x.original, tuple) else x.original
                pairs.append((row["key"], (x.error_type, _plain(row))))
            elif isinstance(x, pl.DataFrame):
                pairs += [(r["key"], _plain(r)) for r in x.to_dicts()]
            elif isinstance(x, tuple):
                pairs.append((x[0], _plain(x[1])))
            else:
                pairs.append((x["key"], _plain(x)))
        result[name] = _by_key(pairs)
    return result


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    """A record with its event as a plain dict, NaN made comparable."""
    out = {}
    for k, v in record.items():
        if isinstance(v, dict):
            v = _plain(v)
        elif isinstance(v, float) and v != v:
            v = "nan"
        out[k] = v
    return out


point = st.tuples(
    st.sampled_from(KEYS),
    st.integers(-9_000, 40_000),  # ms from the key's previous timestamp: out of order and gaps
    st.sampled_from([0.0, 1.0, 2.0, 3.0, 4.5, 6.0, 9.0, float("nan"), None]),
)


def _events(points: list[tuple]) -> list[dict[str, Any]]:
    clock = dict.fromkeys(KEYS, 0)
    events = []
    for key, step_ms, s in points:
        clock[key] += step_ms
        t = T0 + timedelta(milliseconds=clock[key] + 60_000)
        events.append({"key": key, "t": t, "s": s, "s_field": "x"})
    return events


def _cut(events: list[dict], sizes: list[int], frames: bool) -> list[Any]:
    """The events in batches of ``sizes`` (repeated): frames, or ``(key, event)`` rows."""
    batches, i = [], 0
    for n in sizes * (len(events) + 1):
        if i >= len(events):
            break
        part = events[i : i + n]
        i += n
        if frames:
            batches.append(
                pl.DataFrame(
                    part,
                    schema={
                        "key": pl.String,
                        "t": pl.Datetime("us", "UTC"),
                        "s": pl.Float64,
                        "s_field": pl.String,
                    },
                )
            )
        else:
            batches.append(
                [(e["key"], {k: v for k, v in e.items() if v is not None}) for e in part]
            )
    return batches


def _windows_kw(lateness_s: int, use_scorer: bool, quantile: bool, min_points: int) -> dict:
    return dict(
        threshold=QuantileThreshold(0.8, 0.5, window=60 * SEC, warmup=5 * SEC)
        if quantile
        else FixedThreshold(4.0, close_below=2.0),
        score=ZScore("s", window=30 * SEC, min_points=2) if use_scorer else "s",
        min_points=min_points,
        cooldown=10 * SEC,
        gap=25 * SEC,
        max_duration=90 * SEC,
        lateness=lateness_s * SEC,
    )


@settings(max_examples=60, deadline=None)
@given(
    points=st.lists(point, min_size=1, max_size=150),
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=6),
    lateness_s=st.sampled_from([0, 3, 7]),
    use_scorer=st.booleans(),
    quantile=st.booleans(),
    min_points=st.integers(1, 3),
    frames=st.booleans(),
)
def test_results_and_lateness_do_not_depend_on_shards_or_cut_points(
    points, sizes, lateness_s, use_scorer, quantile, min_points, frames
):
    """shards=1 with the input in one batch = shards=3 with it cut anywhere: every key's
    windows, alerts, rejections and late rows, in order (rows and frames alike)."""
    events = _events(points)
    kw = _windows_kw(lateness_s, use_scorer, quantile, min_points)
    one = drive(_cut(events, [len(events)], frames), shards=1, frames=frames, **kw)
    cut = drive(_cut(events, sizes, frames), shards=3, frames=frames, **kw)
    assert one == cut
    bad = sum(1 for e in events if not (isinstance(e["s"], float) and e["s"] == e["s"]))
    assert sum(map(len, one["errs"].values())) == bad


@settings(max_examples=40, deadline=None)
@given(
    points=st.lists(point, min_size=1, max_size=120),
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=6),
    lateness_s=st.sampled_from([0, 3, 7]),
    shards=st.sampled_from([1, 3]),
)
def test_score_does_not_depend_on_shards_or_cut_points(points, sizes, lateness_s, shards):
    events = _events(points)
    kw = dict(
        op="score", score=ZScore("s", window=30 * SEC, min_points=2), lateness=lateness_s * SEC
    )
    for frames in (False, True):
        one = drive(_cut(events, [len(events)], frames), shards=1, frames=frames, **kw)
        cut = drive(_cut(events, sizes, frames), shards=shards, frames=frames, **kw)
        assert one == cut
        total = sum(len(v) for stream in one.values() for v in stream.values())
        assert total == len(events)  # every row ends scored, rejected or late


@settings(max_examples=40, deadline=None)
@given(
    points=st.lists(point, min_size=1, max_size=120),
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=6),
    lateness_s=st.sampled_from([0, 3]),
    use_scorer=st.booleans(),
    quantile=st.booleans(),
)
def test_the_frame_path_equals_the_row_path(points, sizes, lateness_s, use_scorer, quantile):
    """The same rows as frames and as (key, event) pairs: the same records and rejections
    (the error types; a frame's row and the event are the same dict but for missing fields)."""
    events = [{k: v for k, v in e.items()} for e in _events(points)]
    for e in events:  # rows and frames agree on a missing value: a null field is absent
        if e["s"] is None:
            e["s"] = float("nan")
    kw = _windows_kw(lateness_s, use_scorer, quantile, 2)
    rows = drive(_cut(events, sizes, False), shards=3, frames=False, **kw)
    frames = drive(_cut(events, sizes, True), shards=3, frames=True, **kw)
    assert rows == frames
    kw = dict(
        op="score", score=ZScore("s", window=30 * SEC, min_points=2), lateness=lateness_s * SEC
    )
    rows = drive(_cut(events, sizes, False), shards=2, frames=False, **kw)
    frames = drive(_cut(events, sizes, True), shards=2, frames=True, **kw)
    assert rows == frames


def test_out_of_order_within_lateness_is_in_order():
    rng = random.Random(1)
    events = []
    for i in range(300):
        for key in ("a", "b"):
            s = rng.choice([0.0, 1.0, 3.0, 5.0, 8.0])
            events.append({"key": key, "t": T0 + i * SEC, "s": s, "s_field": "x"})
    shuffled = sorted(events, key=lambda e: (e["t"] - T0) / SEC + rng.uniform(0, 4.9))
    for use_scorer in (False, True):
        kw = _windows_kw(5, use_scorer, False, 2)
        for frames in (False, True):
            a = drive(_cut(events, [64], frames), shards=2, frames=frames, **kw)
            b = drive(_cut(shuffled, [64], frames), shards=2, frames=frames, **kw)
            assert a == b and not a["late"]
            assert a["windows"] or use_scorer  # the raw scores open windows


def test_bad_rows_go_to_errs_and_the_rest_of_the_frame_goes_on():
    t = [T0 + i * SEC for i in range(8)]
    frame = pl.DataFrame(
        {
            "key": ["p", None, "p", "p", "p", "p", "p", "p"],
            "t": t[:6] + [None, t[7]],
            "s": [0.0, 9.0, float("nan"), float("inf"), 5.0, 6.0, 9.0, 1.0],
        },
        schema={"key": pl.String, "t": pl.Datetime("us", "UTC"), "s": pl.Float64},
    )
    flow = Dataflow("bad_frame")
    up = op.input(
        "in", flow, TestingSource([frame, "not a frame", frame.with_columns(s=pl.lit("x"))])
    )
    res = anomaly_windows(
        "aw", up, key="key", timestamp="t", score="s", threshold=FixedThreshold(4.0), shards=3
    )
    windows, errs = [], []
    op.output("w", res.windows, TestingSink(windows))
    op.output("e", res.errs, TestingSink(errs))
    run_main(flow)
    assert sorted(r.error_type for r in errs) == sorted(
        ["BadKey", "NonFinite", "NonFinite", "BadTimestamp", "BadItem"] + ["NotANumber"] * 8
    )
    assert [(w["key"], w["points"], w["peak_score"]) for w in windows] == [("p", 2, 6.0)]
    scored = score("sc", up, key="key", timestamp="t", scorer=ZScore("s", window=60 * SEC))
    assert scored.errs is not None


@pytest.mark.parametrize("frames", [False, True])
def test_lateness_does_not_depend_on_shards_in_a_dataflow(frames):
    rng = random.Random(7)
    events = []
    for i in range(200):
        key = rng.choice(KEYS)
        events.append({"key": key, "t": T0 + (i + rng.randint(-6, 0)) * SEC, "s": rng.random() * 6})

    def run(shards: int, batch: int) -> tuple[list, list]:
        flow = Dataflow("late_shards")
        items = _cut(events, [batch], frames) if frames else [(e["key"], e) for e in events]
        up = op.input("in", flow, TestingSource(items, batch_size=1 if frames else batch))
        kw: dict[str, Any] = (
            {"key": "key", "timestamp": "t"} if frames else {"timestamp": lambda e: e["t"]}
        )
        res = anomaly_windows(
            "aw",
            up,
            score="s",
            threshold=FixedThreshold(4.0),
            lateness=3 * SEC,
            shards=shards,
            **kw,
        )
        late, w = [], []
        op.output("l", res.late, TestingSink(late))
        op.output("w", res.windows, TestingSink(w))
        run_main(flow)
        row = (lambda r: r.original) if frames else (lambda r: r.original[1])
        return sorted((row(r)["key"], row(r)["t"]) for r in late), len(w)

    one = run(1, 200)
    assert one[0] and one == run(3, 7) == run(3, 1)


def test_not_a_key_event_pair_is_rejected_with_the_item():
    good = [("p", {"t": T0 + i * SEC, "s": s}) for i, s in enumerate([0.0, 5.0, 6.0, 1.0])]
    bad = [5, (3, {"t": T0, "s": 9.0}), ("a", "b", "c"), (["k"], {"t": T0, "s": 9.0})]
    items = good[:2] + bad + good[2:]
    for shards in (1, 4):
        flow = Dataflow("bad")
        s = op.input("in", flow, TestingSource(items, batch_size=3))
        res = anomaly_windows(
            "aw",
            s,
            timestamp=lambda e: e["t"],
            threshold=FixedThreshold(4.0),
            score="s",
            shards=shards,
        )
        w: list = []
        errs: list = []
        op.output("w", res.windows, TestingSink(w))
        op.output("e", res.errs, TestingSink(errs))
        run_main(flow)
        assert [(r.error_type, r.original) for r in errs] == [("BadItem", x) for x in bad]
        assert [(k, r["points"], r["peak_score"]) for k, r in w] == [("p", 2, 6.0)]


def test_shards_must_be_positive():
    flow = Dataflow("v")
    s = op.input("in", flow, TestingSource([]))
    with pytest.raises(ValueError, match="shards must be an int >= 1"):
        anomaly_windows("a", s, timestamp=lambda e: e["t"], threshold=FixedThreshold(1.0), shards=0)


# ---------------------------------------------------------------- recovery


def test_recovery_of_shard_state_gives_the_uninterrupted_output(tmp_path):
    rng = random.Random(5)
    items: list = []
    for i in range(120):
        for key in ("a", "b", "c", "d"):
            s = rng.choice([0.0, 1.0, 3.0, 5.0, 8.0])
            items.append((key, {"t": T0 + (i * 4 + rng.randrange(3)) * SEC, "s": s}))

    def run(source_items: list, recovery: RecoveryConfig | None) -> tuple[dict, dict]:
        flow = Dataflow("rec")
        s = op.input("in", flow, TestingSource(source_items, batch_size=5))
        res = anomaly_windows(
            "aw",
            s,
            timestamp=lambda e: e["t"],
            threshold=FixedThreshold(1.5, close_below=0.5),
            score=ZScore("s", window=40 * SEC, min_points=3),
            lateness=3 * SEC,
            cooldown=10 * SEC,
            alerts=True,
            shards=3,
        )
        w: list = []
        o: list = []
        op.output("w", res.windows, TestingSink(w))
        op.output("o", res.opened, TestingSink(o))
        run_main(flow, epoch_interval=timedelta(0), recovery_config=recovery)
        return {r["window_id"]: r for _, r in w}, {r["window_id"]: r for _, r in o}

    whole = run(items, None)
    assert len(whole[0]) >= 10
    init_db_dir(tmp_path, 1)
    cfg = RecoveryConfig(str(tmp_path))
    cut = len(items) // 2
    crashing = items[:cut] + [TestingSource.ABORT()] + items[cut:]  # one ABORT: it fires once
    first = run(crashing, cfg)
    second = run(crashing, cfg)
    assert len(first[0]) < len(whole[0])  # the crash came mid-stream, with windows still to come
    assert {**first[0], **second[0]} == whole[0]
    assert {**first[1], **second[1]} == whole[1]


def test_score_rejects_items_that_are_not_key_event_pairs():
    items = [
        ("p", {"t": T0, "s": 1.0}),
        5,
        (3, {"t": T0, "s": 2.0}),
        ("p", {"t": T0 + SEC, "s": 2.0}),
    ]
    flow = Dataflow("score_bad")
    s = op.input("in", flow, TestingSource(items, batch_size=2))
    res = score("sc", s, scorer=ZScore("s", window=30 * SEC), timestamp=lambda e: e["t"], shards=2)
    oks: list = []
    errs: list = []
    op.output("o", res.oks, TestingSink(oks))
    op.output("e", res.errs, TestingSink(errs))
    run_main(flow)
    assert [(r.error_type, r.original) for r in errs] == [("BadItem", 5), ("BadItem", items[2])]
    assert [k for k, _ in oks] == ["p", "p"]
    with pytest.raises(ValueError, match="shards must be an int >= 1"):
        score("sc2", s, scorer=ZScore("s", window=SEC), timestamp=lambda e: e["t"], shards=0)
