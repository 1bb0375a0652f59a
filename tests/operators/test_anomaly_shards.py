"""anomaly_windows routed by shard: the same per-key results as routing by key, and recovery of shard state."""

from __future__ import annotations

import pickle
import random
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.anomaly import (
    FixedThreshold,
    QuantileThreshold,
    ZScore,
    _clock,
    _shard,
    anomaly_windows,
    score,
)
from streamml.operators.anomaly import scoring as scoring_mod
from streamml.operators.anomaly import windows as windows_mod

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
SEC = timedelta(seconds=1)
KEYS = ["a", "b", "c", "d", "e"]


def _by_key(kvs: list[tuple[Any, Any]]) -> dict[Any, list[Any]]:
    """Outputs grouped by key, each key's in emission order (the order across keys is Bytewax's)."""
    out: dict[Any, list[Any]] = {}
    for key, v in kvs:
        out.setdefault(key, []).append(v)
    return out


def _keyed_reference(step_id: str, up: Any, **kw: Any) -> dict[str, Any]:
    """The operator as it was: Bytewax routes by key and runs one ``_WindowsLogic`` per key."""
    th = kw["threshold"]
    score = kw["score"]
    if isinstance(score, str):
        scorer, extract, driver = None, windows_mod._score_field(score), score + "_field"
    else:
        scorer, extract, driver = score, _clock._field_values(score.fields), ""
    rules = windows_mod._WindowRules(
        kw["min_points"],
        0,
        _clock._us(kw["cooldown"]),
        _clock._us(kw["gap"]),
        _clock._us(kw["max_duration"]),
        True,
    )
    cfg = windows_mod._WindowsConfig(
        rules, th, scorer, kw["timestamp"], _clock._us(kw["lateness"]), extract, driver
    )
    out = op.stateful_batch("ref_state", up, lambda resume: windows_mod._WindowsLogic(cfg, resume))
    routed = op.flat_map("ref_records", out, windows_mod._records(step_id))
    return {
        kind: op.map(
            f"ref_{kind}",
            op.filter(f"ref_is_{kind}", routed, lambda t, k=kind: t[0] == k),
            lambda t: t[1],
        )
        for kind in ("closed", "opened", "errs", "late")
    }


def _run_both(items: list, batch_size: int, shards: int, **kw: Any) -> tuple[dict, dict]:
    flow = Dataflow("shards")
    s = op.input("in", flow, TestingSource(items, batch_size=batch_size))
    got = anomaly_windows("aw", s, alerts=True, shards=shards, **kw)
    ref = _keyed_reference("shards.aw", s, **kw)
    sinks: dict[str, dict[str, list]] = {"got": {}, "ref": {}}
    for kind, stream in (("closed", got.windows), ("opened", got.opened)):
        op.output(f"got_{kind}", stream, TestingSink(sinks["got"].setdefault(kind, [])))
    for kind, stream in (("errs", got.errs), ("late", got.late)):
        rej = op.map(f"got_{kind}_kv", stream, lambda r: (r.original[0], r))
        op.output(f"got_{kind}", rej, TestingSink(sinks["got"].setdefault(kind, [])))
    for kind, stream in ref.items():
        if kind in ("errs", "late"):
            stream = op.map(f"ref_{kind}_kv", stream, lambda r: (r.original[0], r))
        op.output(f"ref_out_{kind}", stream, TestingSink(sinks["ref"].setdefault(kind, [])))
    run_main(flow)
    return (
        {k: _by_key(v) for k, v in sinks["got"].items()},
        {k: _by_key(v) for k, v in sinks["ref"].items()},
    )


point = st.tuples(
    st.sampled_from(KEYS),
    st.integers(-9_000, 40_000),  # ms from the key's previous timestamp: out of order and gaps
    st.sampled_from([0.0, 1.0, 2.0, 3.0, 4.5, 6.0, 9.0, "bad", None]),
)


@settings(max_examples=60, deadline=None)
@given(
    points=st.lists(point, min_size=1, max_size=150),
    batch_size=st.integers(1, 40),
    lateness_s=st.sampled_from([0, 3, 7]),
    use_scorer=st.booleans(),
    quantile=st.booleans(),
    min_points=st.integers(1, 3),
    shards=st.sampled_from([1, 3]),
)
def test_sharded_matches_keyed_routing(
    points, batch_size, lateness_s, use_scorer, quantile, min_points, shards
):
    clock = dict.fromkeys(KEYS, 0)
    items = []
    for key, step_ms, s in points:
        clock[key] += step_ms
        e = {"t": T0 + timedelta(milliseconds=clock[key] + 60_000), "s": s, "s_field": "x"}
        if s is None:
            del e["s"]
        items.append((key, e))
    kw = dict(
        timestamp=lambda e: e["t"],
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
    got, ref = _run_both(items, batch_size, shards, **kw)
    assert got == ref
    assert sum(map(len, got["errs"].values())) == sum(
        1 for _, e in items if not isinstance(e.get("s"), float)
    )


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
    with pytest.raises(ValueError, match="shards must be >= 1"):
        anomaly_windows("a", s, timestamp=lambda e: e["t"], threshold=FixedThreshold(1.0), shards=0)


# ---------------------------------------------------------------- the shard state against keyed calls


def _cfg(lateness_us: int) -> windows_mod._WindowsConfig:
    rules = windows_mod._WindowRules(2, 0, 10_000_000, 30_000_000, 10**12, True)
    return windows_mod._WindowsConfig(
        rules,
        FixedThreshold(4.0, 2.0),
        None,
        lambda e: e["t"],
        lateness_us,
        windows_mod._score_field("s"),
        "s_field",
    )


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.lists(
                st.tuples(
                    st.sampled_from(KEYS), st.integers(0, 20), st.sampled_from([0.0, 3.0, 5.0])
                ),
                min_size=1,
                max_size=12,
            ),
            st.integers(1, 40),  # seconds of wall clock passing with no input
        ),
        max_size=30,
    ),
    lateness_s=st.sampled_from([0, 4]),
    snap_at=st.integers(0, 30),
)
def test_shard_state_makes_the_calls_bytewax_makes_per_key(steps, lateness_s, snap_at):
    """One shard state vs one logic per key driven as Bytewax drives them, on a fake clock.

    Same outputs per key, same live keys, same wake times, through eviction,
    heap rebuilds and a snapshot/restore in the middle.
    """
    now = [10**15]
    mp = pytest.MonkeyPatch()
    mp.setattr(_clock, "_now_us", lambda: now[0])
    try:
        cfg = _cfg(lateness_s * 1_000_000)
        make = lambda snap: windows_mod._WindowsLogic(cfg, snap)  # noqa: E731
        shard = _shard._ShardLogic(make, None)
        keyed: dict[str, windows_mod._WindowsLogic] = {}
        got: list = []
        want: list = []
        event_clock = dict.fromkeys(KEYS, 0)
        shard_due = shard.notify_at()
        for i, step in enumerate(steps):
            if i == snap_at:
                shard = _shard._ShardLogic(make, pickle.loads(pickle.dumps(shard.snapshot())))
                keyed = {
                    k: make(pickle.loads(pickle.dumps(v.snapshot()))) for k, v in keyed.items()
                }
                shard_due = shard.notify_at()
            due_before = {k: v.notify_at() for k, v in keyed.items()}
            if isinstance(step, int):
                now[0] += step * 1_000_000
            else:
                items = []
                for key, dt, s in step:
                    event_clock[key] += dt
                    items.append((key, {"t": T0 + event_clock[key] * SEC, "s": s}))
                (part,) = _shard._group_by_shard(1)(items)
                for out in shard.on_batch([part[1]])[0]:
                    got.extend(out)
                for key, events in part[1][0].items():
                    logic = keyed.get(key) or make(None)
                    keyed[key] = logic
                    out, discard = logic.on_batch(events)
                    want.extend((key, v) for v in out)
                    if discard:
                        del keyed[key]
            # Bytewax notifies after the batch, by the wake times asked for before it, and
            # activates again at once while some wake time has passed.
            wall = _clock._dt(now[0])
            if shard_due is not None and shard_due <= wall:
                for out in shard.on_notify()[0]:
                    got.extend(out)
            shard_due = shard.notify_at()
            while shard_due is not None and shard_due <= wall:
                for out in shard.on_notify()[0]:
                    got.extend(out)
                shard_due = shard.notify_at()
            while due_before:
                for key, due in due_before.items():
                    if key in keyed and due is not None and due <= wall:
                        out, discard = keyed[key].on_notify()
                        want.extend((key, v) for v in out)
                        if discard:
                            del keyed[key]
                due_before = {k: v.notify_at() for k, v in keyed.items()}
                due_before = {k: d for k, d in due_before.items() if d is not None and d <= wall}
            assert set(shard.keys) == set(keyed)
            dues = [d for d in (v.notify_at() for v in keyed.values()) if d is not None]
            assert shard_due == (min(dues) if dues else None)
        for out in shard.on_eof()[0]:
            got.extend(out)
        for key, logic in keyed.items():
            want.extend((key, v) for v in logic.on_eof()[0])
        assert _by_key(got) == _by_key(want)
        assert shard.snapshot() == {k: v.snapshot() for k, v in keyed.items()}
    finally:
        mp.undo()


def test_many_keys_keep_one_live_wake_each():
    now = [10**15]
    mp = pytest.MonkeyPatch()
    mp.setattr(_clock, "_now_us", lambda: now[0])
    try:
        shard = _shard._ShardLogic(lambda snap: windows_mod._WindowsLogic(_cfg(0), snap), None)
        for t in range(50):
            items = [(f"k{i}", {"t": T0 + t * SEC, "s": 0.0}) for i in range(1000)]
            shard.on_batch([_shard._group_by_shard(1)(items)[0][1]])
            shard.notify_at()
            now[0] += 1000
        assert len(shard.due) == 1000 and len(shard.heap) <= 2 * 1000 + 64 + 1000
        now[0] += 31_000_000  # every key quiet for longer than gap: one notification evicts all
        assert shard.notify_at() <= _clock._dt(now[0])
        shard.on_notify()
        assert shard.keys == {} and shard.notify_at() is None
    finally:
        mp.undo()


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


# ---------------------------------------------------------------- score


@settings(max_examples=40, deadline=None)
@given(
    points=st.lists(point, min_size=1, max_size=120),
    batch_size=st.integers(1, 40),
    lateness_s=st.sampled_from([0, 3, 7]),
    shards=st.sampled_from([1, 3]),
)
def test_sharded_score_matches_keyed_routing(points, batch_size, lateness_s, shards):
    clock = dict.fromkeys(KEYS, 0)
    items: list = []
    for key, step_ms, s in points:
        clock[key] += step_ms
        e = {"t": T0 + timedelta(milliseconds=clock[key] + 60_000), "s": s}
        if s is None:
            del e["s"]
        items.append((key, e))
    scorer = ZScore("s", window=30 * SEC, min_points=2)
    flow = Dataflow("score_shards")
    s = op.input("in", flow, TestingSource(items, batch_size=batch_size))
    got = score(
        "sc", s, scorer=scorer, timestamp=lambda e: e["t"], lateness=lateness_s * SEC, shards=shards
    )
    cfg = scoring_mod._ScoreConfig(
        scorer, lambda e: e["t"], lateness_s * 1_000_000, "score", "score_field"
    )
    ref = op.stateful_batch("ref", s, lambda resume: scoring_mod._ScoreLogic(cfg, resume))
    ref_oks = op.flat_map_batch("ref_events", ref, scoring_mod._events)
    ref_rej = op.flat_map_batch("ref_rej", ref, scoring_mod._rejections("score_shards.sc"))
    sinks: dict[str, list] = {k: [] for k in ("oks", "errs", "late", "ref_oks", "ref_rej")}
    op.output("oks", got.oks, TestingSink(sinks["oks"]))
    op.output("errs", got.errs, TestingSink(sinks["errs"]))
    op.output("late", got.late, TestingSink(sinks["late"]))
    op.output("ref_oks", ref_oks, TestingSink(sinks["ref_oks"]))
    op.output("ref_rej_out", ref_rej, TestingSink(sinks["ref_rej"]))
    run_main(flow)
    assert _by_key(sinks["oks"]) == _by_key(sinks["ref_oks"])
    for kind, late in (("errs", False), ("late", True)):  # each stream in order; not the two merged
        want = [(r.original[0], r) for r in sinks["ref_rej"] if (r.error_type == "Late") == late]
        assert _by_key([(r.original[0], r) for r in sinks[kind]]) == _by_key(want)
    assert len(sinks["oks"]) + len(sinks["errs"]) + len(sinks["late"]) == len(items)


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
    with pytest.raises(ValueError, match="shards must be >= 1"):
        score("sc2", s, scorer=ZScore("s", window=SEC), timestamp=lambda e: e["t"], shards=0)
