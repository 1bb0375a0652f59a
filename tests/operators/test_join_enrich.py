"""enrich: stream–table join semantics, bootstrap, misses, tombstones; frames = rows."""

from __future__ import annotations

import pickle
from collections import Counter, deque
from datetime import datetime, timedelta, timezone

import bytewax.operators as op
import polars as pl
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.join import MISSING, TableReady, enrich
from streamml.operators.join._shards import CONTROL, LEFT, RIGHT
from streamml.operators.join.enrich import (
    _Config,
    _EnrichState,
    _FrameLogic,
    _only,
    _RowLogic,
    _TableFrame,
    _without,
    merge_fields,
)

READY = TableReady("t", 0, 1)
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


class Clock:
    """A wall clock the test moves."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def config(
    bootstrapping=False, default=MISSING, max_wait=None, clock=None, merge=merge_fields, key=""
):
    return _Config(
        step_id="e",
        merge=merge,
        default=default,
        max_wait=max_wait,
        wait_for_bootstrap=bootstrapping,
        key=key,
        clock=clock or Clock(),
    )


def logic(bootstrapping=False, default=MISSING, max_wait=None, clock=None, merge=merge_fields):
    return _RowLogic(config(bootstrapping, default, max_wait, clock, merge), None)


def frame_logic(bootstrapping=False, default=MISSING, max_wait=None, clock=None, resume=None):
    return _FrameLogic(config(bootstrapping, default, max_wait, clock, key="k"), resume)


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
    assert lg.table == {"dev2": {"v": "north"}}


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
    clock = Clock()
    lg = logic(max_wait=timedelta(hours=1), clock=clock)
    oks, errs = drive(
        lg, [[(LEFT, "a", {"id": 1}), (LEFT, "b", {"id": 2})], [(RIGHT, "a", {"v": 7})]], eof=False
    )
    assert oks == [("a", {"id": 1, "v": 7})]
    assert errs == []
    assert lg.notify_at() is not None
    # Nothing is due yet.
    assert lg.on_notify()[0] == []
    clock.now += timedelta(minutes=59)
    assert lg.on_notify()[0] == []
    clock.now += timedelta(minutes=1)  # the hour has passed
    ((_, errs, _),) = lg.on_notify()[0]
    assert [(r.error_type, r.original) for r in errs] == [("MissingRow", ("b", {"id": 2}))]
    assert lg.waiting == {} and lg.notify_at() is None


def test_default_for_miss_and_bad_merge_goes_to_errs():
    lg = logic(default={"v": None})
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
    assert snap["data"]["table"] == {"a": {"v": 1}}


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
    with pytest.raises(ValueError, match="max_wait must be a timedelta > 0"):
        enrich("e", s, s, max_wait=timedelta(0))
    with pytest.raises(ValueError, match="shards"):
        enrich("e2", s, s, shards=0)


def test_state_stays_bounded_with_key_churn():
    clock = Clock()
    lg = logic(max_wait=timedelta(microseconds=1), clock=clock)
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
        clock.now += timedelta(microseconds=1)
        lg.on_notify()  # 1 us has passed: waiting misses resolve
        sizes.append((len(lg.table), len(lg.waiting), len(lg.deadlines)))
    assert all(size == (100, 0, 0) for size in sizes[1:])


# ---------------------------------------------------------------- frames


def drive_frames(lg, batches, eof=True):
    """Feed ``(side, key, value)`` batches to a frame logic: runs of events as one frame each."""
    frames, errs = [], []

    def collect(result):
        for o, e, _ in result[0]:
            frames.extend(o)
            errs.extend(e)

    for batch in batches:
        items = []
        for side, key, value in batch:
            if side == LEFT:
                row = {"k": key, **value}
                if items and items[-1][0] == LEFT:
                    items[-1][1].append(row)
                else:
                    items.append((LEFT, [row]))
            elif side == RIGHT:
                if items and items[-1][0] == RIGHT:
                    items[-1][1].append((key, value))
                else:
                    items.append((RIGHT, [(key, value)]))
            else:
                items.append((CONTROL, value))
        collect(lg.on_batch([(s, pl.DataFrame(x) if s == LEFT else x) for s, x in items]))
    if eof:
        collect(lg.on_eof())
    return frames, errs


def frame_rows(frames):
    return [row for f in frames for row in f.to_dicts()]


TICK = 3  # a pseudo side in the generated arrivals: the clock moves and both logics are notified


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([LEFT, LEFT, RIGHT, RIGHT, CONTROL, TICK]),
            st.sampled_from("abcd"),
            st.one_of(st.none(), st.integers(0, 9)),
        ),
        max_size=40,
    ),
    st.lists(st.integers(0, 40), max_size=5),
    st.booleans(),
    st.booleans(),
    st.sampled_from([None, timedelta(seconds=10)]),
    st.sampled_from([0, 1024]),
)
def test_frame_path_equals_row_path(spec, cuts, with_default, bootstrapping, max_wait, slack):
    """Frames and rows see the same table at the same moments: the same joins, the same misses.

    ``slack=0``: the table frame drops its dead rows as soon as they outnumber the live ones.
    """
    default = {"v": -1} if with_default else MISSING
    row_clock, frame_clock = Clock(), Clock()
    rows = logic(bootstrapping, default, max_wait, row_clock)
    frames = frame_logic(bootstrapping, default, max_wait, frame_clock)
    frames.rows.slack = slack
    arrivals, ticks = [], []
    for i, (side, key, v) in enumerate(spec):
        if side == LEFT:
            arrivals.append((LEFT, key, {"id": i}))
        elif side == RIGHT:
            arrivals.append((RIGHT, key, None if v is None else {"v": v}))
        elif side == CONTROL:
            arrivals.append((CONTROL, "", READY))
        else:
            ticks.append(len(arrivals))  # a tick after the arrivals so far
    bounds = sorted({0, *cuts, *ticks, len(arrivals)})
    bounds = [b for b in bounds if b <= len(arrivals)]
    row_out, row_errs, got, got_errs = [], [], [], []
    for a, b in zip(bounds, bounds[1:]):
        if a < b:
            o, e = drive(rows, [arrivals[a:b]], eof=False)
            row_out += o
            row_errs += e
            o, e = drive_frames(frames, [arrivals[a:b]], eof=False)
            got += o
            got_errs += e
        for _ in range(ticks.count(b)):
            row_clock.now += timedelta(seconds=6)
            frame_clock.now += timedelta(seconds=6)
            for o, e, _ in rows.on_notify()[0]:
                row_out += o
                row_errs += e
            for o, e, _ in frames.on_notify()[0]:
                got += o
                got_errs += e
        # each waiting key counted once per waiting frame holding it
        assert frames.waiting_keys == Counter(
            k for _, f in frames.waiting for k in set(f.get_column("k").to_list())
        )
    o, e = drive(rows, [], eof=True)
    row_out += o
    row_errs += e
    o, e = drive_frames(frames, [], eof=True)
    got += o
    got_errs += e
    assert Counter((r["k"], r["id"], r.get("v")) for r in frame_rows(got)) == Counter(
        (k, e["id"], e["v"]) for k, e in row_out
    )
    assert Counter((r.original["k"], r.original["id"]) for r in got_errs) == Counter(
        (r.original[0], r.original[1]["id"]) for r in row_errs
    )
    assert {r.error_type for r in got_errs} <= {"MissingRow"}


def test_frames_take_the_row_columns_with_a_suffix_on_a_clash():
    lg = frame_logic()
    frames, errs = drive_frames(
        lg,
        [
            [(RIGHT, "a", {"site": "north", "id": 99, "k": "row's own k"})],
            [(LEFT, "a", {"id": 1}), (LEFT, "b", {"id": 2})],
        ],
    )
    (frame,) = frames
    assert frame.columns == ["k", "id", "site", "id_right", "k_right"]
    assert frame.rows() == [("a", 1, "north", 99, "row's own k")]
    assert [(r.error_type, r.original, r.reason) for r in errs] == [
        ("MissingRow", {"k": "b", "id": 2}, "no table row for key 'b'")
    ]


@pytest.mark.parametrize(
    "default, max_wait", [(MISSING, None), (MISSING, timedelta(seconds=5)), ({"v": 0}, None)]
)
def test_frames_whose_columns_clash_beyond_the_suffix_are_rejected_whole(default, max_wait):
    """``v`` and ``v_right`` taken: every row of the frame is rejected, hits and misses alike."""
    lg = frame_logic(default=default, max_wait=max_wait)
    rows = [{"k": "a", "v": 1, "v_right": 2}, {"k": "b", "v": 3, "v_right": 4}]
    ((out, errs, _),) = lg.on_batch([(RIGHT, [("a", {"v": 9})]), (LEFT, pl.DataFrame(rows))])[0]
    assert out == [] and [r.original for r in errs] == rows
    assert {r.error_type for r in errs} == {"DuplicateError"} and lg.waiting == []


def test_frames_default_fills_misses_and_names_fields_like_rows():
    lg = frame_logic(default={"site": "?", "id": -1, "extra": 0.5})
    frames, errs = drive_frames(
        lg,
        [[(RIGHT, "a", {"site": "north"}), (LEFT, "a", {"id": 1}), (LEFT, "z", {"id": 2})]],
    )
    assert errs == []
    (frame,) = frames
    assert frame.columns == ["k", "id", "site", "id_right", "extra"]
    assert frame.rows() == [("a", 1, "north", None, None), ("z", 2, "?", -1, 0.5)]


def test_frames_integer_keys_match_the_rows_of_their_text():
    lg = frame_logic()
    out = lg.on_batch(
        [(RIGHT, [("7", {"v": 1.5})]), (LEFT, pl.DataFrame({"k": [7, 8], "x": [1, 2]}))]
    )[0]
    ((frames, errs, _),) = out
    assert frames[0].rows() == [(7, 1, 1.5)]
    assert [r.original for r in errs] == [{"k": 8, "x": 2}]


def test_frames_a_table_row_that_fits_no_column_is_rejected_and_its_key_deleted():
    lg = frame_logic(default={})
    frames, errs = drive_frames(
        lg,
        [
            [(RIGHT, "a", {"v": 1.0}), (RIGHT, "b", {"v": 2.0}), (RIGHT, "c", {"v": 3.0})],
            [(RIGHT, "d", {"v": "four"}), (RIGHT, "e", "not a mapping")],
            [(LEFT, "a", {"id": 1}), (LEFT, "d", {"id": 2}), (LEFT, "e", {"id": 3})],
        ],
    )
    assert sorted(r.error_type for r in errs) == ["BadItem", "BadItem"]
    assert sorted(r.original for r in errs) == [("d", {"v": "four"}), ("e", "not a mapping")]
    assert frame_rows(frames) == [
        {"k": "a", "id": 1, "v": 1.0},
        {"k": "d", "id": 2, "v": None},  # deleted: the default
        {"k": "e", "id": 3, "v": None},
    ]
    assert set(lg.table) == {"a", "b", "c"}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.sampled_from("abcde"),
                st.one_of(
                    st.none(),  # a tombstone
                    st.builds(lambda v: {"v": v}, st.integers(0, 9)),
                    st.builds(lambda v: {"v": v, "w": v}, st.integers(0, 9)),  # a new column
                    st.just({"v": "text"}),  # another type: the frame is built again
                ),
            ),
            max_size=6,
        ),
        max_size=12,
    ),
    st.sampled_from([0, 2, 1024]),
)
def test_table_frame_rows_are_the_tables_latest(batches, slack):
    """After each batch of upserts and tombstones, every live key's frame row is its last row."""
    tf = _TableFrame(slack=slack)
    table: dict = {}
    for batch in batches:
        for key, row in batch:
            tf.dirty.add(key)
            if row is None:
                table.pop(key, None)
            else:
                table[key] = row
        errs: list = []
        frame, index = tf.current("e", table, errs)
        for r in errs:  # rejected rows leave the table, as the join's upsert does
            assert r.error_type == "BadItem" and r.original[0] not in table
        assert set(index) == set(table)
        got = {k: frame.row(i, named=True) for k, i in index.items()}
        for key, row in table.items():
            assert {n: v for n, v in got[key].items() if v is not None} == {
                "__streamml_enrich_hit": True,
                **{n: v for n, v in row.items() if v is not None},
            }
        assert frame.height <= 2 * len(index) + slack


@given(
    st.integers(0, 40).flatmap(
        lambda n: st.tuples(st.just(n), st.sets(st.integers(0, max(n - 1, 0)), max_size=n))
    ),
    st.integers(1, 3),
)
def test_without_leaves_out_exactly_the_rows_gone(shape, chunks):
    """A frame less some rows, or only those rows (slices when few, a gather when many), in order."""
    n, gone = shape
    gone = sorted(i for i in gone if i < n)
    size = -(-n // chunks) or 1
    parts = [
        pl.DataFrame(
            {
                "i": list(range(s, min(s + size, n))),
                "k": [f"k{j}" for j in range(s, min(s + size, n))],
            }
        )
        for s in range(0, n, size)
    ]
    frame = (
        pl.concat(parts, rechunk=False)
        if parts
        else pl.DataFrame(schema={"i": pl.Int64, "k": pl.String})
    )
    got = _without(frame, gone)
    keep = [i for i in range(n) if i not in set(gone)]
    assert got.schema == frame.schema
    assert got.rows() == [(i, f"k{i}") for i in keep]
    picked = _only(frame, gone)
    assert picked.schema == frame.schema
    assert picked.rows() == [(i, f"k{i}") for i in gone]


def test_frames_bootstrap_wait_and_release():
    clock = Clock()
    lg = frame_logic(bootstrapping=True, max_wait=timedelta(seconds=5), clock=clock)
    frames, errs = drive_frames(
        lg, [[(LEFT, "a", {"id": 1}), (RIGHT, "a", {"v": 1}), (LEFT, "b", {"id": 2})]], eof=False
    )
    assert (frames, errs) == ([], [])  # held until the bootstrap is read
    frames, errs = drive_frames(lg, [[(CONTROL, "", READY)]], eof=False)
    assert frame_rows(frames) == [{"k": "a", "id": 1, "v": 1}] and errs == []
    assert lg.waiting_keys == {"b": 1} and lg.notify_at() == T0 + timedelta(seconds=5)
    frames, errs = drive_frames(lg, [[(RIGHT, "b", {"v": 2})]], eof=False)  # its row comes
    assert frame_rows(frames) == [{"k": "b", "id": 2, "v": 2}] and lg.waiting == []
    drive_frames(lg, [[(LEFT, "c", {"id": 3})]], eof=False)
    clock.now += timedelta(seconds=5)
    ((frames, errs, _),) = lg.on_notify()[0]
    assert frames == [] and [r.original for r in errs] == [{"k": "c", "id": 3}]
    assert lg.waiting == [] and lg.waiting_keys == {}


def test_frames_snapshot_round_trip_resumes_the_same():
    clock = Clock()
    lg = frame_logic(bootstrapping=True, max_wait=timedelta(seconds=5), clock=clock)
    first = [[(RIGHT, "a", {"v": 1}), (LEFT, "a", {"id": 1}), (LEFT, "b", {"id": 2})]]
    rest = [[(CONTROL, "", READY)], [(RIGHT, "b", {"v": 2}), (LEFT, "c", {"id": 3})]]
    drive_frames(lg, first, eof=False)
    snap = pickle.loads(pickle.dumps(lg.snapshot()))
    assert snap["state"] == "streamml.join.enrich" and snap["version"] == 1
    resumed = frame_logic(
        bootstrapping=True, max_wait=timedelta(seconds=5), clock=clock, resume=snap
    )
    want = drive_frames(lg, rest)
    got = drive_frames(resumed, rest)
    assert frame_rows(got[0]) == frame_rows(want[0]) != []
    assert [r.original for r in got[1]] == [r.original for r in want[1]] == [{"k": "c", "id": 3}]
    with pytest.raises(ValueError, match="rows path's state"):
        frame_logic(resume=logic().snapshot())


def test_the_previous_release_state_upgrades_to_a_record():
    old = _EnrichState()
    deadline = T0 + timedelta(seconds=3)
    old.table = {"a": {"v": 1}}
    old.waiting = {"b": [(deadline, {"id": 2})]}
    old.deadlines = deque([(deadline, "b")])
    old.held = None
    old.ready = {("t", 0)}
    clock = Clock()
    lg = _RowLogic(config(max_wait=timedelta(seconds=9), clock=clock), old)
    assert lg.table == {"a": {"v": 1}} and lg.ready == {("t", 0)}
    assert lg.notify_at() == deadline
    oks, errs = drive(lg, [[(RIGHT, "b", {"v": 2}), (LEFT, "a", {"id": 1})]], eof=False)
    assert oks == [("b", {"id": 2, "v": 2}), ("a", {"id": 1, "v": 1})] and errs == []


def _frame_flow(frames, changelog, **kwargs):
    flow = Dataflow("enrich_frames_test")
    ev = op.input("events", flow, TestingSource(frames, batch_size=2))
    tb = op.input("table", flow, TestingSource(changelog, batch_size=4))
    out = enrich("enrich", ev, tb, key="k", **kwargs)
    oks, errs = [], []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    return oks, errs


@settings(max_examples=15, deadline=None)
@given(
    st.dictionaries(st.sampled_from([f"k{i}" for i in range(30)]), st.integers(0, 99), max_size=30),
    st.lists(st.sampled_from([f"k{i}" for i in range(35)]), min_size=1, max_size=40),
    st.integers(1, 9),
    st.integers(1, 10),
)
def test_frame_dataflow_with_bootstrap_equals_the_row_dataflow(rows, keys, shards, size):
    changelog = [(k, {"old": True}) for k in rows] + [(k, {"v": v}) for k, v in rows.items()]
    changelog.append(TableReady("t", 0, 1))
    events = [{"k": k, "id": i} for i, k in enumerate(keys)]
    frames = [pl.DataFrame(events[a : a + size]) for a in range(0, len(events), size)]
    oks, errs = _frame_flow(frames, changelog, shards=shards)
    want, want_errs = _flow([(e["k"], {"id": e["id"]}) for e in events], changelog, shards=shards)
    assert sorted((r["k"], r["id"], r["v"]) for r in frame_rows(oks)) == sorted(
        (k, e["id"], e["v"]) for k, e in want
    )
    assert sorted(r.original["id"] for r in errs) == sorted(r.original[1]["id"] for r in want_errs)


def test_frame_dataflow_bad_keys_and_items_are_rejected():
    frames = [
        pl.DataFrame({"k": ["a", None], "id": [1, 2]}),
        "not a frame",
        pl.DataFrame({"id": [3]}),  # no key column
    ]
    changelog = [("a", {"v": 1}), (5, {"v": 2}), READY]
    oks, errs = _frame_flow(frames, changelog)
    assert frame_rows(oks) == [{"k": "a", "id": 1, "v": 1}]
    assert sorted((r.error_type, repr(r.original)) for r in errs) == sorted(
        [
            ("BadKey", repr({"k": None, "id": 2})),
            ("BadItem", repr("not a frame")),
            ("BadKey", repr({"id": 3})),
            ("BadKey", repr((5, {"v": 2}))),
        ]
    )


def test_frame_misconfiguration_raises_at_build_time():
    flow = Dataflow("bad_frames")
    s = op.input("in", flow, TestingSource([]))
    with pytest.raises(ValueError, match="merge is for"):
        enrich("e1", s, s, key="k", merge=lambda e, r: e)
    with pytest.raises(ValueError, match="default is a mapping"):
        enrich("e2", s, s, key="k", default=None)
    with pytest.raises(ValueError, match="key must name"):
        enrich("e3", s, s, key="")
