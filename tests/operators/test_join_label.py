"""label_join: delayed labels meet predictions; window metrics equal scikit-learn's."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from streamml.operators.join import classification_metrics, label_join, regression_metrics
from streamml.operators.join._shards import LEFT, RIGHT, micros
from streamml.operators.join.label import _Config, _LabelLogic

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
WINDOW = timedelta(seconds=10)
DELAY = timedelta(seconds=5)


def grouped(rows):
    """``(side, key, item)`` rows as the shard step gets them: runs of one side's pairs."""
    out = []
    for side, key, item in rows:
        if out and out[-1][0] == side:
            out[-1][1].append((key, item))
        else:
            out.append((side, [(key, item)]))
    return out


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ts(item: dict) -> datetime:
    return item["ts"]


def config(lateness_s=0, shards=1):
    return _Config(
        step_id="l",
        getters=(ts, ts),
        max_delay=micros(DELAY),
        window=micros(WINDOW),
        lateness=micros(timedelta(seconds=lateness_s)),
        shards=shards,
        prediction="prediction",
        label="label",
        probability="p",
        model_version="model_version",
        regression=False,
        pos_label=1,
        average="binary",
    )


def drive(items, cuts, lateness_s):
    lg = _LabelLogic(config(lateness_s), None)
    outs = [[], [], [], [], []]
    bounds = [0, *sorted(set(cuts)), len(items)]
    batches = [items[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if a < b]
    for result in [lg.on_batch(grouped(b))[0] for b in batches] + [lg.on_eof()[0]]:
        for lists in result:
            for acc, got in zip(outs, lists, strict=True):
                acc += got
    return outs, lg


def brute_force(items):
    """Each prediction takes the first-arriving unused label with t <= lt <= t + DELAY."""
    preds = [(i, k, e) for i, (s, k, e) in enumerate(items) if s == LEFT]
    labels = [(i, k, e) for i, (s, k, e) in enumerate(items) if s == RIGHT]
    used, labelled, unlabelled = set(), {}, set()
    # Matching happens when the later of the two arrives; replay arrival order.
    waiting_preds, waiting_labels = [], []
    for s, k, e in items:
        if s == LEFT:
            for j, (lk, le) in enumerate(waiting_labels):
                if lk == k and e["ts"] <= le["ts"] <= e["ts"] + DELAY:
                    labelled[e["id"]] = le["label"]
                    used.add(le["id"])
                    del waiting_labels[j]
                    break
            else:
                waiting_preds.append((k, e))
        else:
            for j, (pk, pe) in enumerate(waiting_preds):
                if pk == k and pe["ts"] <= e["ts"] <= pe["ts"] + DELAY:
                    labelled[pe["id"]] = e["label"]
                    used.add(e["id"])
                    del waiting_preds[j]
                    break
            else:
                waiting_labels.append((k, e))
    unlabelled = {e["id"] for _, _, e in preds} - set(labelled)
    unmatched = {e["id"] for _, _, e in labels} - used
    return labelled, unlabelled, unmatched


@st.composite
def arrivals(draw, max_items=40):
    lateness = draw(st.integers(0, 4))
    n = draw(st.integers(0, max_items))
    base, items = 0, []
    for i in range(n):
        base += draw(st.integers(0, 3))
        t = at(base - draw(st.integers(0, lateness)))
        key = draw(st.sampled_from(["e1", "e2", "e3", "e4"]))
        if draw(st.booleans()):
            y = draw(st.integers(0, 1))
            event = {
                "id": i,
                "prediction": y,
                "p": draw(st.floats(0.05, 0.95)),
                "model_version": draw(st.sampled_from(["a", "b"])),
                "ts": t,
            }
            items.append((LEFT, key, event))
        else:
            items.append((RIGHT, key, {"id": i, "label": draw(st.integers(0, 1)), "ts": t}))
    return lateness, items, draw(st.lists(st.integers(0, n), max_size=6))


def sk_metrics(pairs):
    y_true = [t for t, _, _ in pairs]
    y_pred = [p for _, p, _ in pairs]
    proba = [pr for _, _, pr in pairs]
    # One precision_recall_fscore_support call gives what precision_score, recall_score and
    # f1_score each compute by calling it (average="binary", pos_label=1): the same numbers
    # for a third of the time (the five calls were most of this property test's 8 s).
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, average="binary", zero_division=0
    )
    return {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "log_loss": skm.log_loss(y_true, proba, labels=[0, 1]),
    }


@settings(max_examples=250, deadline=None)
@given(arrivals())
def test_label_join_matches_bruteforce_and_sklearn(arr):
    lateness, items, cuts = arr
    (labelled, unlabelled, errs, late, parts), _ = drive(items, cuts, lateness)
    assert late == []
    want_labelled, want_unlabelled, want_unmatched = brute_force(items)
    assert {e["id"]: e["label"] for _, e in labelled} == want_labelled
    assert len(labelled) == len(want_labelled)
    assert sorted(e["id"] for _, e in unlabelled) == sorted(want_unlabelled)
    assert sorted(r.original[1]["id"] for r in errs) == sorted(want_unmatched)
    assert {r.error_type for r in errs} <= {"UnmatchedLabel"}

    # Window parts: every prediction counted once, metrics as scikit-learn computes them.
    preds = {e["id"]: e for s, _, e in items if s == LEFT}
    by_window = defaultdict(list)
    for pid, e in preds.items():
        ws = (e["ts"] - T0) // WINDOW
        by_window[(ws, e["model_version"])].append(pid)
    got = {}
    for item in parts:
        if len(item) == 3:
            ws_us, version, part = item
            key = (
                (ws_us - micros(T0 - datetime(1970, 1, 1, tzinfo=timezone.utc))) // micros(WINDOW),
                version,
            )
            assert key not in got  # one part per window from a single shard
            got[key] = part
    assert set(got) == set(by_window)
    for key, pids in by_window.items():
        part = got[key]
        assert part.predictions == len(pids)
        assert part.unlabelled == sum(1 for p in pids if p in want_unlabelled)
        pairs = [
            (want_labelled[p], preds[p]["prediction"], preds[p]["p"])
            for p in pids
            if p in want_labelled
        ]
        assert part.labelled == len(pairs)
        result = part.stats.result()
        if pairs:
            for name, value in sk_metrics(pairs).items():
                assert result[name] == pytest.approx(value, abs=1e-9), name


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(0, 3), min_size=1, max_size=60),
    st.data(),
    st.sampled_from(["binary", "macro", "micro", "weighted"]),
)
def test_classification_metrics_equal_sklearn(y_true, data, average):
    n = len(y_true)
    y_pred = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    raw = np.array(
        data.draw(
            st.lists(st.lists(st.floats(0.01, 1.0), min_size=4, max_size=4), min_size=n, max_size=n)
        )
    )
    proba = raw / raw.sum(axis=1, keepdims=True)
    ours = classification_metrics(
        y_true, y_pred, [dict(enumerate(row)) for row in proba], pos_label=1, average=average
    )
    kw = {"average": average, "zero_division": 0}
    if average == "binary":
        y_true_b = [int(y == 1) for y in y_true]
        y_pred_b = [int(y == 1) for y in y_pred]
        want_p, want_r, want_f = (
            skm.precision_score(y_true_b, y_pred_b, **kw),
            skm.recall_score(y_true_b, y_pred_b, **kw),
            skm.f1_score(y_true_b, y_pred_b, **kw),
        )
    else:
        want_p, want_r, want_f = (
            skm.precision_score(y_true, y_pred, **kw),
            skm.recall_score(y_true, y_pred, **kw),
            skm.f1_score(y_true, y_pred, **kw),
        )
    assert ours["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert ours["precision"] == pytest.approx(want_p)
    assert ours["recall"] == pytest.approx(want_r)
    assert ours["f1"] == pytest.approx(want_f)
    assert ours["log_loss"] == pytest.approx(skm.log_loss(y_true, proba, labels=[0, 1, 2, 3]))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(-100, 100), st.floats(-100, 100)), min_size=1, max_size=50))
def test_regression_metrics_equal_sklearn(pairs):
    y_true, y_pred = zip(*pairs, strict=True)
    ours = regression_metrics(y_true, y_pred)
    assert ours["mae"] == pytest.approx(skm.mean_absolute_error(y_true, y_pred), abs=1e-9)
    assert ours["rmse"] == pytest.approx(
        math.sqrt(skm.mean_squared_error(y_true, y_pred)), abs=1e-9
    )


def test_state_stays_bounded_with_id_churn():
    lg = _LabelLogic(config(lateness_s=2), None)
    sizes = []
    for chunk in range(30):
        batch = []
        for i in range(400):
            n = chunk * 400 + i
            t = n / 20
            batch.append(
                (LEFT, f"id{n}", {"prediction": 1, "p": 0.5, "model_version": "v", "ts": at(t)})
            )
            if n % 3:  # two thirds get a label 2 s later
                batch.append((RIGHT, f"id{n - 40}", {"label": 1, "ts": at(t)}))
        lg.on_batch(grouped(batch))
        sizes.append((lg.size(), len(lg.et.kid_of), len(lg.preds) + len(lg.labels)))
    for i in range(3):
        assert max(s[i] for s in sizes[5:]) <= 2 * sizes[5][i] + 10
    assert sizes[-1][0] < 400
    assert sizes[-1][2] < 400


def _flow(preds, labels, **kwargs):
    flow = Dataflow("label_test")
    out = label_join(
        "eval",
        op.input("preds", flow, TestingSource(preds, batch_size=5)),
        op.input("labels", flow, TestingSource(labels, batch_size=3)),
        ts=ts,
        max_delay=DELAY,
        window=WINDOW,
        **kwargs,
    )
    got = {name: [] for name in ("labelled", "unlabelled", "metrics", "errs", "late")}
    for name, sink in got.items():
        op.output(name, getattr(out, name), TestingSink(sink))
    run_main(flow)
    return got


@settings(max_examples=10, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 40), st.floats(-5, 5), st.sampled_from(["v1", "v2"])), max_size=30
    ),
    st.data(),
    st.integers(1, 6),
)
def test_dataflow_regression_metrics_per_window_and_version(spec, data, shards):
    preds = [
        (f"e{i}", {"prediction": y, "model_version": v, "ts": at(t)})
        for i, (t, y, v) in enumerate(spec)
    ]
    labels = []
    truth = {}
    for i, (t, y, _) in enumerate(spec):
        delay = data.draw(st.one_of(st.none(), st.integers(0, 6)))
        if delay is not None:
            labels.append((f"e{i}", {"label": y + 1.0, "ts": at(t + delay)}))
            if delay <= 5:
                truth[i] = y + 1.0
    got = _flow(preds, labels, task="regression", lateness=timedelta(seconds=50), shards=shards)
    assert got["late"] == []
    assert len(got["labelled"]) == len(truth)
    assert len(got["unlabelled"]) == len(spec) - len(truth)
    assert len(got["errs"]) == len(labels) - len(truth)  # labels later than max_delay
    want = defaultdict(list)
    for i, (t, _, v) in enumerate(spec):
        want[(t // 10, v)].append(i)
    records = {((m["window_start"] - T0) // WINDOW, m["model_version"]): m for m in got["metrics"]}
    assert set(records) == set(want)
    for key, ids in want.items():
        m = records[key]
        assert m["predictions"] == len(ids)
        assert m["unlabelled"] == sum(1 for i in ids if i not in truth)
        pairs = [(truth[i], spec[i][1]) for i in ids if i in truth]
        if pairs:
            assert m["mae"] == pytest.approx(skm.mean_absolute_error(*zip(*pairs, strict=True)))
        else:
            assert m["mae"] is None


def test_metrics_come_one_per_window_in_window_order():
    preds = [(f"e{i}", {"prediction": 1, "model_version": "v", "ts": at(i)}) for i in range(100)]
    labels = [(f"e{i}", {"label": i % 2, "ts": at(i + 1)}) for i in range(100)]
    got = _flow(preds, labels, shards=2, lateness=timedelta(seconds=100))
    starts = [m["window_start"] for m in got["metrics"]]
    assert starts == sorted(starts) and len(starts) == 10
    assert all(m["predictions"] == 10 and m["labelled"] == 10 for m in got["metrics"])
    assert Counter(e["label"] for _, e in got["labelled"]) == {0: 50, 1: 50}


def test_bad_prediction_and_label_go_to_errs():
    got = _flow(
        [("a", {"model_version": "v", "ts": at(0)}), ("b", {"prediction": 1, "ts": at(0)})],
        [("b", {"ts": at(1)}), ("b", {"label": 1, "ts": at(2)})],
    )
    assert sorted(r.error_type for r in got["errs"]) == ["MissingField", "MissingField"]
    assert [e["label"] for _, e in got["labelled"]] == [1]


def test_misconfiguration_raises_at_build_time():
    flow = Dataflow("bad")
    s = op.input("in", flow, TestingSource([]))
    with pytest.raises(ValueError, match="window must be > 0"):
        label_join("a", s, s, ts=ts, max_delay=DELAY, window=timedelta(0))
    with pytest.raises(ValueError, match="task must be"):
        label_join("b", s, s, ts=ts, max_delay=DELAY, window=WINDOW, task="ranking")


def test_window_closes_once_every_shard_has_passed_it():
    from streamml.operators.join.label import _MetricsLogic, _WindowPart
    from streamml.operators.join.metrics import ClassificationStats

    w = micros(WINDOW)
    lg = _MetricsLogic(config(shards=2), None)

    def part(n):
        p = _WindowPart(ClassificationStats())
        for _ in range(n):
            p.stats.add(1, 1)
            p.predictions += 1
            p.labelled += 1
        return p

    assert lg.on_batch([(0, "v", part(2)), ("0", w)])[0] == []  # shard 1 not heard from
    assert lg.on_batch([(0, "v", part(3)), ("1", 0)])[0] == []  # shard 1 not past the window
    (record,) = lg.on_batch([("1", 2 * w)])[0]
    assert (record["predictions"], record["accuracy"]) == (5, 1.0)
    assert lg.parts == {}
