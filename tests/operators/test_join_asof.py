"""asof_join: point-in-time lookups equal a brute-force as-of join, for any in-bound interleaving."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.join import MISSING, asof_join, merge_fields
from streamml.operators.join._shards import LEFT, RIGHT, micros
from streamml.operators.join.asof import _AsofLogic, _Config

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ts(item: dict) -> datetime:
    return item["ts"]


def value(row: dict) -> dict | None:
    return None if row["v"] is None else {"v": row["v"]}


def logic(lateness_s=0, default=MISSING, max_versions=1000, ttl=None):
    cfg = _Config(
        "a",
        (ts, ts),
        value,
        merge_fields,
        default,
        timedelta(seconds=lateness_s),
        max_versions,
        ttl,
    )
    return _AsofLogic(cfg, None)


def stored(lg, key):
    """The versions ``lg`` keeps for ``key`` (``None`` when it keeps none)."""
    kid = lg.et.kid_of.get(key)
    return None if kid is None else lg.versions.get(kid)


def grouped(rows):
    """``(side, key, item)`` rows as the shard step gets them: runs of one side's pairs."""
    out = []
    for side, key, item in rows:
        if out and out[-1][0] == side:
            out[-1][1].append((key, item))
        else:
            out.append((side, [(key, item)]))
    return out


def drive(lg, items, cuts=()):
    oks, errs, late = [], [], []
    bounds = [0, *sorted(set(cuts)), len(items)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        if a < b:
            for o, e, lt in lg.on_batch(grouped(items[a:b]))[0]:
                oks, errs, late = oks + o, errs + e, late + lt
    for o, e, _ in lg.on_eof()[0]:
        oks, errs = oks + o, errs + e
    return oks, errs, late


def brute_force(items):
    """For each event: the newest row of its key with ts <= event ts (last arrival wins ties)."""
    rows = [(k, r, i) for i, (s, k, r) in enumerate(items) if s == RIGHT]
    out, missing = Counter(), Counter()
    for s, k, e in items:
        if s != LEFT:
            continue
        best = None
        for rk, r, i in rows:
            if rk == k and r["ts"] <= e["ts"] and (best is None or (r["ts"], i) >= best[0]):
                best = ((r["ts"], i), r)
        if best is None or best[1]["v"] is None:
            missing[(k, e["id"])] += 1
        else:
            out[(k, e["id"], best[1]["v"])] += 1
    return out, missing


@st.composite
def arrivals(draw, max_items=40):
    lateness = draw(st.integers(0, 6))
    n = draw(st.integers(0, max_items))
    base, items = 0, []
    for i in range(n):
        base += draw(st.integers(0, 3))
        t = at(base - draw(st.integers(0, lateness)))
        key = draw(st.sampled_from("ab"))
        if draw(st.booleans()):
            items.append((LEFT, key, {"id": i, "ts": t}))
        else:
            items.append(
                (RIGHT, key, {"v": draw(st.one_of(st.none(), st.integers(0, 9))), "ts": t})
            )
    cuts = draw(st.lists(st.integers(0, n), max_size=6))
    return lateness, items, cuts


@settings(max_examples=300, deadline=None)
@given(arrivals())
def test_asof_matches_bruteforce(arr):
    lateness, items, cuts = arr
    oks, errs, late = drive(logic(lateness), items, cuts)
    assert late == []
    want, missing = brute_force(items)
    assert Counter((k, e["id"], e["v"]) for k, e in oks) == want
    assert Counter((r.original[0], r.original[1]["id"]) for r in errs) == missing


def test_events_wait_for_the_watermark_so_a_later_arriving_version_counts():
    lg = logic(lateness_s=10)
    oks, _, _ = drive(
        lg,
        [
            (RIGHT, "k", {"v": 1, "ts": at(0)}),
            (LEFT, "k", {"id": 1, "ts": at(20)}),
            (RIGHT, "k", {"v": 2, "ts": at(15)}),  # arrives after the event, but in bound
            (RIGHT, "k", {"v": 3, "ts": at(40)}),
        ],
    )
    assert [(e["id"], e["v"]) for _, e in oks] == [(1, 2)]


def test_tombstone_deletes_from_its_time_on_and_key_leaves_state():
    lg = logic(lateness_s=10)
    oks, errs, _ = drive(
        lg,
        [
            (RIGHT, "k", {"v": 1, "ts": at(0)}),
            (RIGHT, "k", {"v": None, "ts": at(10)}),
            (LEFT, "k", {"id": 1, "ts": at(5)}),
            (LEFT, "k", {"id": 2, "ts": at(12)}),
            (RIGHT, "other", {"v": 0, "ts": at(40)}),  # another key's time moves nothing of k's
            (LEFT, "k", {"id": 3, "ts": at(30)}),  # k's watermark (20) passes the tombstone
        ],
    )
    assert [(e["id"], e["v"]) for _, e in oks] == [(1, 1)]
    assert [(r.error_type, r.original[1]["id"]) for r in errs] == [
        ("MissingRow", 2),
        ("MissingRow", 3),
    ]
    assert stored(lg, "k") is None and stored(lg, "other") is not None


def test_late_event_goes_to_late():
    _, _, late = drive(
        logic(lateness_s=5),
        [(RIGHT, "k", {"v": 1, "ts": at(100)}), (LEFT, "k", {"id": 1, "ts": at(50)})],
    )
    assert [(r.error_type, r.original[1]["id"]) for r in late] == [("Late", 1)]


def test_lateness_is_per_key_and_a_late_table_row_changes_nothing():
    oks, _, late = drive(
        logic(lateness_s=5),
        [
            (RIGHT, "a", {"v": 1, "ts": at(0)}),
            (RIGHT, "b", {"v": 7, "ts": at(100)}),  # b's time: nothing of a's is late by it
            (LEFT, "a", {"id": 1, "ts": at(10)}),
            (RIGHT, "a", {"v": 2, "ts": at(30)}),
            (RIGHT, "a", {"v": 3, "ts": at(8)}),  # late behind a's 30: not added
            (LEFT, "a", {"id": 2, "ts": at(9)}),  # late too
        ],
    )
    assert [(e["id"], e["v"]) for _, e in oks] == [(1, 1)]
    assert sorted(r.original[1].get("id", r.original[1].get("v")) for r in late) == [2, 3]


def test_state_stays_bounded_with_key_churn():
    lg = logic(lateness_s=5, ttl=timedelta(seconds=30))
    sizes = []
    for chunk in range(30):
        batch = []
        for i in range(500):
            n = chunk * 500 + i
            key = f"k{n // 25}"  # each key is updated and looked up briefly, then never again
            t = at(n / 10)
            if n % 3:
                batch.append((LEFT, key, {"id": n, "ts": t}))
            else:
                batch.append((RIGHT, key, {"v": n, "ts": t}))
        lg.on_batch(grouped(batch))
        sizes.append((lg.size(), len(lg.versions), len(lg.et.kid_of)))
    assert max(s[0] for s in sizes[5:]) <= 2 * sizes[5][0] + 10
    assert max(s[1] for s in sizes[5:]) <= 2 * sizes[5][1] + 10
    assert max(s[2] for s in sizes[5:]) <= 2 * sizes[5][2] + 10
    # 30 s ttl at 10 events per second: ~300 events' worth of keys, not 15,000.
    assert sizes[-1][1] < 40


def test_max_versions_caps_history():
    lg = logic(lateness_s=1000, max_versions=3)
    lg.on_batch([(RIGHT, [("k", {"v": i, "ts": at(i)}) for i in range(10)])])
    assert stored(lg, "k")[1] == [{"v": 7}, {"v": 8}, {"v": 9}]


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 50), st.integers(0, 9)), max_size=25),
    st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 50)), max_size=25),
    st.integers(1, 5),
)
def test_dataflow_matches_bruteforce(rows, events, shards):
    table = [(k, {"v": v, "ts": at(t)}) for k, t, v in rows]
    evs = [(k, {"id": i, "ts": at(t)}) for i, (k, t) in enumerate(events)]
    flow = Dataflow("asof_test")
    out = asof_join(
        "asof",
        op.input("events", flow, TestingSource(evs, batch_size=4)),
        op.input("table", flow, TestingSource(table, batch_size=3)),
        ts=ts,
        table_ts=ts,
        value=value,
        lateness=timedelta(seconds=51),
        shards=shards,
    )
    oks, errs = [], []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    # Ties in table time: the brute force takes the last in table order, as one shard sees it.
    items = [(RIGHT, k, r) for k, r in table] + [(LEFT, k, e) for k, e in evs]
    want, missing = brute_force(items)
    assert Counter((k, e["id"], e["v"]) for k, e in oks) == want
    assert Counter((r.original[0], r.original[1]["id"]) for r in errs) == missing


def test_misconfiguration_raises_at_build_time():
    flow = Dataflow("bad")
    s = op.input("in", flow, TestingSource([]))
    with pytest.raises(ValueError, match="max_versions"):
        asof_join("a", s, s, ts=ts, table_ts=ts, max_versions=0)
    with pytest.raises(ValueError, match="ttl"):
        asof_join("b", s, s, ts=ts, table_ts=ts, ttl=timedelta(0))


def test_resumes_the_previous_releases_pickled_state():
    """A shard state pickled by the release before versioned snapshots (one watermark per
    shard) resumes: its waiting events are looked up against its versions, none is late."""
    import pickle

    from streamml.operators.join import asof
    from streamml.operators.join._shards import NEVER

    old = asof._AsofState()  # as that release built it: plain attributes, pickled whole
    versions = asof._Versions()
    versions.ts, versions.values = (
        [micros(timedelta(seconds=s)) + micros(T0 - EPOCH) for s in (0, 10)],
        [
            {"v": 1},
            {"v": 2},
        ],
    )
    old.versions = {"k": versions}
    t12 = micros(timedelta(seconds=12)) + micros(T0 - EPOCH)
    old.pending = [(t12, 1, "k", {"id": 1, "ts": at(12)})]
    old.timers, old.seq = [], 1
    old.max_seen, old.watermark = t12 + 1, t12 + 1 - micros(timedelta(seconds=10))
    assert old.watermark > NEVER
    lg = _AsofLogic(logic(lateness_s=10).cfg, pickle.loads(pickle.dumps(old)))
    assert lg.et.watermark("k") == old.watermark  # the shard's watermark, now the key's
    oks, errs, late = drive(lg, [(LEFT, "k", {"id": 2, "ts": at(11)})])
    assert late == [] and errs == []
    assert sorted((e["id"], e["v"]) for _, e in oks) == [(1, 2), (2, 2)]
    assert lg.snapshot()["state"] == "streamml.join.asof"
