"""enrich: stream–table join semantics, bootstrap, misses, tombstones."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.join import MISSING, TableReady, enrich
from streamml.operators.join._shards import CONTROL, LEFT, RIGHT
from streamml.operators.join.enrich import _EnrichLogic, _EnrichState, merge_fields

READY = TableReady("t", 0, 1)


def logic(bootstrapping=False, default=MISSING, max_wait=None):
    return _EnrichLogic("e", _EnrichState(bootstrapping), merge_fields, default, max_wait)


def drive(lg, batches, eof=True):
    oks, errs = [], []
    for batch in batches:
        for o, e, _ in lg.on_batch(batch)[0]:
            oks += o
            errs += e
    if eof:
        for o, e, _ in lg.on_eof()[0]:
            oks += o
            errs += e
    return oks, errs


def brute_force(arrivals, default):
    """Replay in arrival order: each event sees the rows that arrived before it."""
    table, out, missing = {}, Counter(), Counter()
    for side, key, value in arrivals:
        if side == RIGHT:
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
        elif key in table:
            out[(key, value["id"], table[key]["v"])] += 1
        elif default is not MISSING:
            out[(key, value["id"], default["v"])] += 1
        else:
            missing[(key, value["id"])] += 1
    return out, missing


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([LEFT, RIGHT]),
            st.sampled_from("abcd"),
            st.one_of(st.none(), st.integers(0, 9)),
        ),
        max_size=40,
    ),
    st.lists(st.integers(0, 40), max_size=5),
    st.booleans(),
)
def test_enrich_matches_replay(spec, cuts, with_default):
    arrivals = []
    for i, (side, key, v) in enumerate(spec):
        if side == LEFT:
            arrivals.append((LEFT, key, {"id": i}))
        else:
            arrivals.append((RIGHT, key, None if v is None else {"v": v}))
    default = {"v": -1} if with_default else MISSING
    bounds = [0, *sorted(set(cuts)), len(arrivals)]
    batches = [arrivals[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if a < b]
    oks, errs = drive(logic(default=default), batches)
    want, missing = brute_force(arrivals, default)
    assert Counter((k, e["id"], e["v"]) for k, e in oks) == want
    assert Counter((r.original[0], r.original[1]["id"]) for r in errs) == missing
    assert all(r.error_type == "MissingRow" for r in errs)


def test_tombstone_deletes_and_rekeyed_row_moves():
    lg = logic()
    oks, errs = drive(
        lg,
        [
            [(RIGHT, "dev1", {"v": "north"}), (LEFT, "dev1", {"id": 1})],
            # device row moves from dev1 to dev2: tombstone the old key, write the new one
            [(RIGHT, "dev1", None), (RIGHT, "dev2", {"v": "north"})],
            [(LEFT, "dev1", {"id": 2}), (LEFT, "dev2", {"id": 3})],
        ],
    )
    assert oks == [("dev1", {"id": 1, "v": "north"}), ("dev2", {"id": 3, "v": "north"})]
    assert [(r.error_type, r.original) for r in errs] == [("MissingRow", ("dev1", {"id": 2}))]
    assert lg.state.table == {"dev2": {"v": "north"}}


def test_events_wait_for_bootstrap_then_see_the_whole_table():
    lg = logic(bootstrapping=True)
    oks, errs = drive(
        lg,
        [
            [(LEFT, "a", {"id": 1}), (RIGHT, "a", {"v": 1})],
            [(LEFT, "b", {"id": 2}), (RIGHT, "b", {"v": 2}), (RIGHT, "a", {"v": 10})],
        ],
        eof=False,
    )
    assert (oks, errs) == ([], [])  # nothing enriched before the bootstrap is read
    oks, errs = drive(lg, [[(CONTROL, "", READY), (LEFT, "a", {"id": 3})]], eof=False)
    assert oks == [
        ("a", {"id": 1, "v": 10}),
        ("b", {"id": 2, "v": 2}),
        ("a", {"id": 3, "v": 10}),
    ]


def test_bootstrap_waits_for_every_partition():
    lg = logic(bootstrapping=True)
    two = [TableReady("t", 0, 2), TableReady("t", 1, 2)]
    oks, _ = drive(
        lg, [[(LEFT, "a", {"id": 1}), (RIGHT, "a", {"v": 1}), (CONTROL, "", two[0])]], eof=False
    )
    assert oks == []
    oks, _ = drive(lg, [[(CONTROL, "", two[0])]], eof=False)  # a repeat does not count twice
    assert oks == []
    oks, _ = drive(lg, [[(CONTROL, "", two[1])]], eof=False)
    assert oks == [("a", {"id": 1, "v": 1})]


def test_miss_waits_for_late_row_then_times_out():
    lg = logic(max_wait=timedelta(hours=1))
    oks, errs = drive(
        lg, [[(LEFT, "a", {"id": 1}), (LEFT, "b", {"id": 2})], [(RIGHT, "a", {"v": 7})]], eof=False
    )
    assert oks == [("a", {"id": 1, "v": 7})]
    assert errs == []
    assert lg.notify_at() is not None
    # Nothing is due yet.
    assert lg.on_notify()[0] == []
    # Pretend the hour has passed.
    lg.state.deadlines = type(lg.state.deadlines)(
        (d - timedelta(hours=2), k) for d, k in lg.state.deadlines
    )
    lg.state.waiting = {
        k: [(d - timedelta(hours=2), e) for d, e in v] for k, v in lg.state.waiting.items()
    }
    ((_, errs, _),) = lg.on_notify()[0]
    assert [(r.error_type, r.original) for r in errs] == [("MissingRow", ("b", {"id": 2}))]
    assert lg.state.waiting == {}


def test_default_for_miss_and_bad_merge_goes_to_errs():
    lg = _EnrichLogic("e", _EnrichState(False), merge_fields, {"v": None}, None)
    oks, errs = drive(
        lg, [[(RIGHT, "a", "not a mapping"), (LEFT, "a", {"id": 1}), (LEFT, "z", {"id": 2})]]
    )
    assert oks == [("z", {"id": 2, "v": None})]
    assert [r.error_type for r in errs] == ["TypeError"]


def test_snapshot_is_a_copy():
    lg = logic()
    drive(lg, [[(RIGHT, "a", {"v": 1})]], eof=False)
    snap = lg.snapshot()
    drive(lg, [[(RIGHT, "a", None)]], eof=False)
    assert snap.table == {"a": {"v": 1}}


def _flow(events, changelog, **kwargs):
    flow = Dataflow("enrich_test")
    ev = op.input("events", flow, TestingSource(events, batch_size=3))
    tb = op.input("table", flow, TestingSource(changelog, batch_size=4))
    out = enrich("enrich", ev, tb, **kwargs)
    oks, errs = [], []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    return oks, errs


@settings(max_examples=20, deadline=None)
@given(
    st.dictionaries(st.sampled_from([f"k{i}" for i in range(30)]), st.integers(0, 99), max_size=30),
    st.lists(st.sampled_from([f"k{i}" for i in range(35)]), max_size=40),
    st.integers(1, 9),
)
def test_dataflow_with_bootstrap_enriches_from_the_full_table(rows, keys, shards):
    # Events race the table in the dataflow; the bootstrap makes the result deterministic.
    changelog = [(k, {"old": True}) for k in rows] + [(k, {"v": v}) for k, v in rows.items()]
    changelog.append(TableReady("t", 0, 1))
    events = [(k, {"id": i}) for i, k in enumerate(keys)]
    oks, errs = _flow(events, changelog, shards=shards)
    assert sorted((k, e["id"], e["v"]) for k, e in oks) == sorted(
        (k, i, rows[k]) for i, k in enumerate(keys) if k in rows
    )
    assert sorted(r.original[1]["id"] for r in errs) == sorted(
        i for i, k in enumerate(keys) if k not in rows
    )


def test_dataflow_without_bootstrap_signal_joins_at_eof_or_when_turned_off():
    events = [("a", {"id": 1})]
    changelog = [("a", {"v": 1})]
    # No TableReady on the stream: events are held until both inputs end.
    oks, _ = _flow(events, changelog)
    assert oks == [("a", {"id": 1, "v": 1})]
    oks, errs = _flow(events, changelog, wait_for_bootstrap=False, default={"v": 0})
    assert len(oks) == 1 and errs == []


def test_misconfiguration_raises_at_build_time():
    flow = Dataflow("bad")
    s = op.input("in", flow, TestingSource([]))
    with pytest.raises(ValueError, match="max_wait must be > 0"):
        enrich("e", s, s, max_wait=timedelta(0))
    with pytest.raises(ValueError, match="shards"):
        enrich("e2", s, s, shards=0)


def test_state_stays_bounded_with_key_churn():
    lg = logic(max_wait=timedelta(microseconds=1))
    sizes = []
    for chunk in range(40):
        batch = []
        for i in range(250):
            n = chunk * 250 + i
            batch.append((RIGHT, f"dev{n}", {"v": n}))  # a device appears ...
            batch.append((LEFT, f"dev{n}", {"id": n}))
            batch.append((LEFT, f"gone{n}", {"id": n}))  # ... a miss that waits
            batch.append((RIGHT, f"dev{n - 100}", None))  # ... and is deleted later
        lg.on_batch(batch)
        lg.on_notify()  # 1 us has passed: waiting misses resolve
        s = lg.state
        sizes.append((len(s.table), len(s.waiting), len(s.deadlines)))
    assert all(size == (100, 0, 0) for size in sizes[1:])
