"""The joins' shared contract: bad keys never crash; interval_join's lateness is per key.

- a bad key on either side (an int key, a None key, an item that is not a
  ``(key, item)`` pair) is a ``BadKey`` rejection on ``errs``, and the
  other items still join;
- out of order within ``lateness`` gives the same pairs as in order;
- which events are late depends neither on ``shards=`` nor on where the
  frames are cut;
- the frame path gives the same pairs as the row path.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import bytewax.operators as op
import polars as pl
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.join import TableReady, asof_join, enrich, interval_join, label_join

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
SEC = timedelta(seconds=1)


def at(s: float) -> datetime:
    return T0 + s * SEC


def ts(e: dict) -> datetime:
    return e["ts"]


def chunks(rows):
    """``(side, key, event)`` rows as the row path's chunks: runs of one side, in arrival order."""
    out = []
    for side, key, event in rows:
        if out and out[-1][0] == side:
            out[-1][1].append((key, event))
        else:
            out.append((side, [(key, event)]))
    return out


def _interval(flow, left, right):
    out = interval_join("j", left, right, left_ts=ts, lower=-SEC, upper=SEC, lateness=10 * SEC)
    return out.oks, out.errs


def _asof(flow, left, right):
    out = asof_join("j", left, right, ts=ts, table_ts=ts, default={}, lateness=10 * SEC)
    return out.oks, out.errs


def _label(flow, left, right):
    out = label_join("j", left, right, ts=ts, max_delay=5 * SEC, window=60 * SEC)
    return out.labelled, out.errs


def _enrich(flow, left, right):
    ready = op.input("ready", flow, TestingSource([TableReady("t", 0, 1)]))
    out = enrich("j", left, op.merge("table", right, ready), default={})
    return out.oks, out.errs


JOINS = {"interval": _interval, "asof": _asof, "label": _label, "enrich": _enrich}
BAD = [(7, {"ts": at(0)}), (None, {"ts": at(0)}), {"ts": at(0)}, "not a pair"]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", sorted(JOINS))
def test_a_bad_key_is_rejected_and_the_rest_joins(name, side):
    good_left = [("a", {"id": 1, "prediction": 1, "ts": at(0)})]
    good_right = [("a", {"id": 2, "label": 1, "ts": at(0)})]
    lefts = good_left + (BAD if side == "left" else [])
    rights = good_right + (BAD if side == "right" else [])
    flow = Dataflow("bad_keys")
    oks, errs = JOINS[name](
        flow, op.input("l", flow, TestingSource(lefts)), op.input("r", flow, TestingSource(rights))
    )
    got_oks, got_errs = [], []
    op.output("oks", oks, TestingSink(got_oks))
    op.output("errs", errs, TestingSink(got_errs))
    run_main(flow)
    assert sorted(map(repr, (r.original for r in got_errs))) == sorted(map(repr, BAD))
    assert {r.error_type for r in got_errs} == {"BadKey"}
    assert len(got_oks) == 1 and got_oks[0][0] == "a"


def _rows_run(lefts, rights, *, shards=3, lateness=5, batch=4):
    flow = Dataflow("rows")
    out = interval_join(
        "j",
        op.input("l", flow, TestingSource(lefts, batch_size=batch)),
        op.input("r", flow, TestingSource(rights, batch_size=batch)),
        left_ts=ts,
        lower=-2 * SEC,
        upper=3 * SEC,
        lateness=lateness * SEC,
        how="left",
        shards=shards,
    )
    oks, late = [], []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("late", out.late, TestingSink(late))
    run_main(flow)
    pairs = Counter((k, a["id"], b and b["id"]) for k, (a, b) in oks)
    return pairs, sorted(r.original[1]["id"] for r in late)


def _frames(items, cuts):
    bounds = [0, *sorted(set(cuts)), len(items)]
    frames = []
    for a, b in zip(bounds, bounds[1:]):
        if a < b:
            part = items[a:b]
            frames.append(
                pl.DataFrame(
                    {
                        "k": [k for k, _ in part],
                        "id": [e["id"] for _, e in part],
                        "ts": [e["ts"] for _, e in part],
                    },
                    schema={"k": pl.String, "id": pl.String, "ts": pl.Datetime("us", "UTC")},
                )
            )
    return frames


def _frames_run(lefts, rights, lcuts, rcuts, *, shards=3, lateness=5):
    flow = Dataflow("frames")
    out = interval_join(
        "j",
        op.input("l", flow, TestingSource(_frames(lefts, lcuts), batch_size=1)),
        op.input("r", flow, TestingSource(_frames(rights, rcuts), batch_size=1)),
        key="k",
        left_ts="ts",
        lower=-2 * SEC,
        upper=3 * SEC,
        lateness=lateness * SEC,
        how="left",
        shards=shards,
    )
    oks, late = [], []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("late", out.late, TestingSink(late))
    run_main(flow)
    pairs = Counter()
    for f in oks:
        assert f.columns[:3] == ["k", "id", "ts"]
        if "id_right" not in f.columns:  # unmatched lefts before any right row came
            f = f.with_columns(id_right=pl.lit(None, pl.String))
        for k, a, b in f.select("k", "id", "id_right").iter_rows():
            pairs[(k, a, b)] += 1
    return pairs, sorted(r.original["id"] for r in late)


_ITEMS = st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 40)), max_size=25)


def _events(spec, prefix):
    return [(k, {"id": f"{prefix}{i}", "ts": at(t)}) for i, (k, t) in enumerate(spec)]


@settings(max_examples=20, deadline=None)
@given(
    _ITEMS,
    _ITEMS,
    st.lists(st.integers(0, 25), max_size=4),
    st.lists(st.integers(0, 25), max_size=4),
)
def test_lateness_depends_on_neither_shards_nor_frame_cuts_and_frames_equal_rows(
    lspec, rspec, lcuts, rcuts
):
    # One input: the left events only, so arrival order is fixed whatever the cuts.
    lefts = _events(lspec, "l")
    one = _rows_run(lefts, [], shards=1, lateness=2)
    three = _rows_run(lefts, [], shards=3, lateness=2)
    assert one == three
    assert _frames_run(lefts, [], lcuts, [], shards=1, lateness=2) == one
    assert _frames_run(lefts, [], lcuts, [], shards=3, lateness=2) == one
    # Both inputs, lateness over the whole span: every cut and shard count, the same pairs.
    rights = _events(rspec, "r")
    rows = _rows_run(lefts, rights, shards=2, lateness=41)
    assert rows[1] == []
    assert _frames_run(lefts, rights, lcuts, rcuts, shards=3, lateness=41) == rows


def _logic_run(items, lateness):
    from streamml.operators.join.interval import _Config, _RowLogic

    cfg = _Config(
        "j", -2_000_000, 3_000_000, lateness * SEC, True, timedelta(days=1), None, getters=(ts, ts)
    )
    logic = _RowLogic(cfg, None)
    oks, late = [], []
    for result in [logic.on_batch(chunks(items))[0], logic.on_eof()[0]]:
        for o, _, lt in result:
            oks += o
            late += lt
    return Counter((k, a["id"], b and b["id"]) for k, (a, b) in oks), late


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([0, 1]), st.sampled_from("ab"), st.integers(0, 30)), max_size=25
    ),
    st.randoms(use_true_random=False),
)
def test_out_of_order_within_lateness_equals_in_order(spec, rnd):
    items = [(side, k, {"id": f"{i}", "ts": at(t)}) for i, (side, k, t) in enumerate(spec)]
    ordered = sorted(items, key=lambda x: x[2]["ts"])
    shuffled = list(ordered)
    # Swap disjoint neighbours at most 3 s apart: each event stays within 3 s of the newest.
    i = 0
    while i < len(shuffled) - 1:
        a, b = shuffled[i][2]["ts"], shuffled[i + 1][2]["ts"]
        if (b - a).total_seconds() <= 3 and rnd.random() < 0.5:
            shuffled[i], shuffled[i + 1] = shuffled[i + 1], shuffled[i]
            i += 1
        i += 1
    want, want_late = _logic_run(ordered, 3)
    got, got_late = _logic_run(shuffled, 3)
    assert got_late == [] and want_late == []
    assert got == want
