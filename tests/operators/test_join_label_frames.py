"""label_join on frames: the same joins, windows and rejections as the rows path, and one state."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import bytewax.operators as op
import polars as pl
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.join import _label_frame_logic, label_join
from streamml.operators.join._shards import LEFT, RIGHT
from streamml.operators.join.label import _FrameLogic, _LabelLogic

from tests.operators.test_join_label import (
    DELAY,
    WINDOW,
    arrivals,
    at,
    brute_force,
    config,
    drive,
    grouped,
    ts,
)

PRED_SCHEMA = {
    "k": pl.String,
    "id": pl.Int64,
    "prediction": pl.Int64,
    "p": pl.Float64,
    "model_version": pl.String,
    "ts": pl.Datetime("us", "UTC"),
}
LABEL_SCHEMA = {"k": pl.String, "id": pl.Int64, "label": pl.Int64, "ts": pl.Datetime("us", "UTC")}


def frames_config(lateness_s=0, shards=1):
    cfg = config(lateness_s, shards)
    return type(cfg)(**{**cfg.__dict__, "key": "k", "timestamps": ("ts", "ts")})


def as_frames(rows):
    """``(side, key, item)`` rows as the frame shard step gets them: one frame per side run."""
    out = []
    for side, items in grouped(rows):
        schema = PRED_SCHEMA if side == LEFT else LABEL_SCHEMA
        out.append((side, pl.DataFrame([{"k": k, **e} for k, e in items], schema=schema)))
    return out


def cut(items, cuts):
    bounds = [0, *sorted(set(cuts)), len(items)]
    return [items[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if a < b]


def drive_frames(items, cuts, lateness_s, logic=None, eof=True):
    lg = logic or _FrameLogic(frames_config(lateness_s), None)
    outs = [[], [], [], [], []]
    results = [lg.on_batch(as_frames(b))[0] for b in cut(items, cuts)]
    if eof:
        results.append(lg.on_eof()[0])
    for result in results:
        for lists in result:
            for acc, got in zip(outs, lists, strict=True):
                acc += got
    return outs, lg


def rows_of(frames):
    return pl.concat(frames, how="diagonal_relaxed").to_dicts() if frames else []


def parts_of(parts):
    """Window parts as comparable values: (start, version) -> counts and metrics."""
    got = {}
    for item in parts:
        if len(item) == 3:
            ws, version, part = item
            got[(ws, version)] = (part.predictions, part.labelled, part.unlabelled)
            got[(ws, version, "m")] = part.stats.result()
    return got


@pytest.mark.parametrize("columns_from", [1, None])
@settings(max_examples=120, deadline=None)
@given(arr=arrivals())
def test_frames_match_rows_and_bruteforce(arr, columns_from):
    """Every call matched on columns where it can (1), or small calls by the row loop."""
    lateness, items, cuts = arr
    with pytest.MonkeyPatch.context() as mp:
        if columns_from is not None:
            mp.setattr(_label_frame_logic, "_COLUMNS_FROM", columns_from)
        (labelled, unlabelled, errs, late, parts), lg = drive_frames(items, cuts, lateness)
    rows_out, _ = drive(items, cuts, lateness)
    assert late == [] == rows_out[3]
    want_labelled, want_unlabelled, want_unmatched = brute_force(items)
    got = rows_of(labelled)
    assert {r["id"]: r["label"] for r in got} == want_labelled and len(got) == len(want_labelled)
    # the labelled rows are the rows path's dicts (the key a column here)
    assert sorted(got, key=lambda r: r["id"]) == sorted(
        ({"k": k, **e} for k, e in rows_out[0]), key=lambda r: r["id"]
    )
    assert sorted(r["id"] for r in rows_of(unlabelled)) == sorted(want_unlabelled)
    assert sorted(r.original["id"] for r in errs) == sorted(want_unmatched)
    assert {r.error_type for r in errs} <= {"UnmatchedLabel"}
    assert parts_of(parts) == parts_of(rows_out[4])
    assert [p for p in parts if len(p) == 2] == [p for p in rows_out[4] if len(p) == 2]
    assert lg.size() == 0 and not lg.stores[0].alive.any() and not lg.stores[1].alive.any()


@settings(max_examples=40, deadline=None)
@given(arrivals(max_items=30), st.data())
def test_late_rows_are_the_rows_paths(arr, data):
    """Out of order beyond lateness: the same rows are late, and late rows leave no state."""
    _, items, cuts = arr
    items = [(s, k, {**e, "ts": at(data.draw(st.integers(0, 30)))}) for s, k, e in items]
    (labelled, unlabelled, errs, late, parts), _ = drive_frames(items, cuts, 0)
    rows_out, _ = drive(items, cuts, 0)
    assert sorted(r.original["id"] for r in late) == sorted(
        r.original[1]["id"] for r in rows_out[3]
    )
    assert {r.reason for r in late} == {r.reason for r in rows_out[3]}
    assert sorted(r["id"] for r in rows_of(labelled)) == sorted(e["id"] for _, e in rows_out[0])
    assert sorted(r["id"] for r in rows_of(unlabelled)) == sorted(e["id"] for _, e in rows_out[1])
    assert parts_of(parts) == parts_of(rows_out[4])


@settings(max_examples=40, deadline=None)
@given(arrivals(max_items=30), st.data())
def test_resume_across_paths_equals_uninterrupted(arr, data):
    """A snapshot of either path, resumed on frames or rows, continues as if never stopped."""
    lateness, items, cuts = arr
    stop = data.draw(st.integers(0, len(items)))
    before, after = items[:stop], items[stop:]
    whole, _ = drive_frames(items, cuts, lateness)
    snapshot_of = data.draw(st.sampled_from(["rows", "frames"]))
    resume_on = data.draw(st.sampled_from(["rows", "frames"]))
    if snapshot_of == "rows":
        first, lg = drive(before, [], lateness)  # drive ends its input: do it by hand
        lg = _LabelLogic(config(lateness), None)
        first = [[], [], [], [], []]
        if before:
            for lists in lg.on_batch(grouped(before))[0]:
                for acc, got in zip(first, lists, strict=True):
                    acc += got
        first[0] = [{"k": k, **e} for k, e in first[0]]
        first[1] = [{"k": k, **e} for k, e in first[1]]
    else:
        first, lg = drive_frames(before, [], lateness, eof=False)
        first[0], first[1] = rows_of(first[0]), rows_of(first[1])
    state = lg.snapshot()
    if resume_on == "frames":
        second, _ = drive_frames(after, [], lateness, _FrameLogic(frames_config(lateness), state))
        second[0], second[1] = rows_of(second[0]), rows_of(second[1])
        assert all(r["k"] is not None for r in second[0] + second[1])  # the id column kept
    else:
        second, _ = drive(after, [], lateness)  # replaced below by the resumed logic
        lg2 = _LabelLogic(config(lateness), state)
        second = [[], [], [], [], []]
        results = ([lg2.on_batch(grouped(after))[0]] if after else []) + [lg2.on_eof()[0]]
        for result in results:
            for lists in result:
                for acc, got in zip(second, lists, strict=True):
                    acc += got
        second[0] = [{"k": k, **e} for k, e in second[0]]
        second[1] = [{"k": k, **e} for k, e in second[1]]
    for i in (0, 1):
        got = sorted((r["id"], r.get("label")) for r in first[i] + second[i])
        assert got == sorted((r["id"], r.get("label")) for r in rows_of(whole[i]))
    ids = sorted(
        (r.original["id"] if isinstance(r.original, dict) else r.original[1]["id"])
        for r in first[2] + second[2]
    )
    assert ids == sorted(r.original["id"] for r in whole[2])
    want = parts_of(whole[4])
    got = {}
    for item in first[4] + second[4]:
        if len(item) == 3:  # a window closed before the stop may continue after it
            ws, version, part = item
            if (ws, version) in got:
                got[(ws, version)].merge(part)
            else:
                got[(ws, version)] = part
    assert parts_of([(ws, v, p) for (ws, v), p in got.items()]) == want


def _flow(preds, labels, batch=(1, 1), **kwargs):
    flow = Dataflow("label_frames_test")
    out = label_join(
        "eval",
        op.input("preds", flow, TestingSource(preds, batch_size=batch[0])),
        op.input("labels", flow, TestingSource(labels, batch_size=batch[1])),
        max_delay=DELAY,
        window=WINDOW,
        **kwargs,
    )
    got = {name: [] for name in ("labelled", "unlabelled", "metrics", "errs", "late")}
    for name, sink in got.items():
        op.output(name, getattr(out, name), TestingSink(sink))
    run_main(flow)
    return got


def test_dataflow_frames_equal_rows_across_shards():
    preds = [
        (f"e{i}", {"prediction": i % 2, "p": 0.1 + i % 7 / 10, "model_version": "v", "ts": at(i)})
        for i in range(60)
    ]
    labels = [(f"e{i}", {"label": i // 3 % 2, "ts": at(i + 1 + i % 7)}) for i in range(0, 60, 2)]
    common = dict(probability="p", shards=3, lateness=timedelta(seconds=9))
    rows = _flow(preds, labels, batch=(8, 4), ts=ts, **common)
    pf = [pl.DataFrame([{"k": k, **e} for k, e in preds[a : a + 8]]) for a in range(0, 60, 8)]
    lf = [pl.DataFrame([{"k": k, **e} for k, e in labels[a : a + 4]]) for a in range(0, 30, 4)]
    frames = _flow(pf, lf, key="k", ts="ts", **common)
    assert frames["metrics"] == rows["metrics"] and len(rows["metrics"]) >= 4
    got = sorted(pl.concat(frames["labelled"]).select("k", "label").rows())
    assert got == sorted((k, e["label"]) for k, e in rows["labelled"])
    assert sorted(pl.concat(frames["unlabelled"])["k"].to_list()) == sorted(
        k for k, _ in rows["unlabelled"]
    )
    errs = [(r.error_type, r.original["k"]) for r in frames["errs"]]
    assert sorted(errs) == sorted((r.error_type, r.original[0]) for r in rows["errs"])
    late = [r.original["k"] for r in frames["late"]]
    assert sorted(late) == sorted(r.original[0] for r in rows["late"])


def test_bad_items_go_to_errs_and_the_rest_joins():
    t = [at(i) for i in range(6)]
    preds = [
        pl.DataFrame(
            {
                "k": ["a", None, "c", "d", "e"],
                "prediction": [1, 1, None, 1, 0],
                "p": [0.9, 0.5, 0.5, 0.5, 0.2],
                "ts": [t[0], t[0], t[0], None, t[1]],
            }
        ),
        pl.DataFrame({"k": ["f"], "p": [0.5], "ts": [t[0]]}),  # no prediction column
        pl.DataFrame({"k": ["g"], "prediction": [[1, 2]], "p": [0.5], "ts": [t[0]]}),  # a list
        pl.DataFrame({"k": ["h"], "prediction": [1], "p": ["high"], "ts": [t[0]]}),
        "not a frame",
    ]
    labels = [
        pl.DataFrame(
            {"k": ["a", "e", "e", "z"], "label": [1, None, 0, 1], "note": [1] * 4, "ts": t[1:5]}
        ),
        pl.DataFrame({"k": ["a"], "label": [1], "note": [b"x"], "ts": [t[2]]}),  # does not fit
        pl.DataFrame({"k": ["b"], "label": [{"x": 1}], "ts": [t[2]]}),
        pl.DataFrame({"k": ["a"], "label": [1], "ts": ["soon"]}),
    ]
    got = _flow(preds, labels, key="k", ts="ts", probability="p")
    kinds = sorted(r.error_type for r in got["errs"])
    assert kinds == [
        "BadItem",  # the string
        "BadItem",  # the label frame whose types clash
        "BadKey",
        "BadTimestamp",
        "BadTimestamp",  # a String column
        "MissingField",  # null prediction
        "MissingField",  # no prediction column
        "MissingField",  # null label
        "TypeError",  # a list is no class
        "TypeError",  # nor a struct
        "UnmatchedLabel",  # z
        "ValueError",  # 'high' is no probability
    ]
    assert all(isinstance(r.original, (dict, str)) for r in got["errs"])
    assert sorted(pl.concat(got["labelled"]).select("k", "label").rows()) == [("a", 1), ("e", 0)]
    (m,) = got["metrics"]
    assert (m["predictions"], m["labelled"], m["accuracy"]) == (2, 2, 1.0)


def test_regression_rejects_what_is_not_a_finite_number():
    preds = [
        pl.DataFrame({"k": ["a", "b"], "prediction": [1.5, float("inf")], "ts": [0, 0]}),
        pl.DataFrame({"k": ["c"], "prediction": ["1.5"], "ts": [0]}),
    ]
    labels = [pl.DataFrame({"k": ["a"], "label": [2.0], "ts": [1]})]
    got = _flow(preds, labels, key="k", ts="ts", task="regression")
    assert sorted(r.error_type for r in got["errs"]) == ["NonFinite", "NotANumber"]
    assert [m["mae"] for m in got["metrics"]] == [pytest.approx(0.5)]


def test_misconfigured_frames_raise_at_build_time():
    flow = Dataflow("bad")
    s = op.input("in", flow, TestingSource([]))
    with pytest.raises(ValueError, match="name columns"):
        label_join("a", s, s, key="k", ts=ts, max_delay=DELAY, window=WINDOW)
    with pytest.raises(ValueError, match="functions of an event"):
        label_join("b", s, s, ts="ts", max_delay=DELAY, window=WINDOW)


def test_state_stays_bounded_with_id_churn():
    lg = _FrameLogic(frames_config(lateness_s=2), None)
    sizes = []
    for chunk in range(30):
        preds, labels = [], []
        for i in range(400):
            n = chunk * 400 + i
            e = {"id": n, "prediction": 1, "p": 0.5, "model_version": "v", "ts": at(n / 20)}
            preds.append((LEFT, f"id{n}", e))
            if n % 3:  # two thirds get a label 2 s later
                labels.append((RIGHT, f"id{n - 40}", {"id": n, "label": 1, "ts": at(n / 20)}))
        lg.on_batch(as_frames(preds + labels))
        sizes.append((lg.size(), int(lg.stores[0].alive.sum()), len(lg.stores[0].ids)))
    assert sizes[-1][0] < 400 and sizes[-1][1] < 400
    assert max(s[2] for s in sizes[5:]) <= 2 * max(sizes[5][2], 2048)  # dead rows compacted


def test_frames_of_one_call_that_do_not_fit_together_are_rejected():
    lg = _FrameLogic(frames_config(), None)
    ok = pl.DataFrame({"k": ["a"], "id": [1], "label": [1], "ts": [at(0)]})
    clash = pl.DataFrame({"k": ["b"], "id": [b"2"], "label": [1], "ts": [at(0)]})
    ((_, _, errs, _, _),) = lg.on_batch([(RIGHT, ok), (RIGHT, clash)])[0]
    assert [(r.error_type, r.original["k"]) for r in errs] == [("BadItem", "b")]
    assert lg.stores[RIGHT].gather([0]).rows() == [("a", 1, 1, at(0))]


@pytest.mark.parametrize("frames", [False, True])
def test_a_prediction_whose_window_ends_past_datetimes_range_is_rejected(frames):
    last = datetime.max.replace(tzinfo=timezone.utc)
    preds = [("a", {"prediction": 1, "ts": last}), ("b", {"prediction": 1, "ts": at(0)})]
    if frames:
        preds = [pl.DataFrame([{"k": k, **e} for k, e in preds])]
    got = _flow(preds, [], **({"key": "k", "ts": "ts"} if frames else {"ts": ts}))
    assert [r.error_type for r in got["errs"]] == ["BadTimestamp"]
    assert [m["predictions"] for m in got["metrics"]] == [1]
