"""The fraud example on the session broker: nothing lost, the rollout lands at its time, metrics add up."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from examples.common import unique_topics
from examples.enrich_and_evaluate.__main__ import read_results, run
from examples.enrich_and_evaluate.data import SPAN, START, generate
from examples.enrich_and_evaluate.flow import MAX_LABEL_DELAY, WINDOW, Topics
from examples.enrich_and_evaluate.model import build_models
from streamml.broker import EmbeddedBroker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
N = 4_000
CORRUPT = 4


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def outcome(broker: EmbeddedBroker):
    models = build_models()  # cached under out/, rebuilt when the example's code changes
    data = generate(N, n_accounts=400, seed=23)
    topics = unique_topics(Topics())
    registry = SchemaRegistryClient.new_client({"url": "mock://test-enrich-and-evaluate"})
    summary, _ = run(broker.bootstrap, topics, registry, data, models, corrupt=CORRUPT)
    return data, summary, read_results(broker.bootstrap, topics), models


def test_every_transaction_and_label_is_accounted_for(outcome) -> None:
    data, summary, results, _ = outcome
    live = data.live_accounts
    ever = {key for key, row in data.accounts if row is not None}
    enrichable = {t["tx_id"] for t in data.transactions if t["account_id"] in live}
    # The table is read while transactions flow (no bootstrap wait), so a transaction of an
    # account closed later in the table may be scored with the row it saw before the tombstone.
    closed_later = {t["tx_id"] for t in data.transactions if t["account_id"] in ever - live}
    predicted = [p["tx_id"] for p in results.predictions]
    assert len(predicted) == len(set(predicted))  # no duplicates
    assert enrichable <= set(predicted) <= enrichable | closed_later
    assert summary["transactions_in"] == N + CORRUPT
    assert summary["transactions_accounted_for"] and summary["labels_accounted_for"]
    assert summary["transaction_dead_letter_reasons"] == {
        "DecodeError": CORRUPT // 2,
        "UnknownSchema": CORRUPT // 2,
        "MissingRow": N - len(predicted),
    }
    assert summary["other_dead_letters"] == 0
    assert summary["outcomes_equal_predictions"]
    assert summary["labels_match_ground_truth"]


def test_unlabelled_predictions_are_those_whose_label_never_came_in_time(outcome) -> None:
    data, summary, results, _ = outcome
    sent = {t["tx_id"]: t["ts"] for t in data.transactions}
    in_time = {
        lb["tx_id"]
        for lb in data.labels
        if datetime.fromtimestamp(lb["ts"] / 1000, timezone.utc) - sent[lb["tx_id"]]
        <= MAX_LABEL_DELAY
    }
    expected = {p["tx_id"] for p in results.predictions} - in_time
    unlabelled = {o["tx_id"] for o in results.outcomes if o["is_fraud"] is None}
    assert unlabelled == expected
    assert summary["never_labelled"] == len(expected) > 0
    assert summary["label_dead_letter_reasons"] == {
        "UnmatchedLabel": len(data.labels) - (len(results.predictions) - len(expected))
    }


def test_rollout_lands_at_its_scheduled_time_without_stopping_the_flow(outcome) -> None:
    _, summary, results, models = outcome
    v1, v2 = models.versions
    at = START + SPAN / 2
    times = defaultdict(list)
    for p in results.predictions:
        times[p["model_version"]].append(_time(p["ts"]))
    assert set(times) == {v1, v2}  # the broken "v3" rollout scored nothing
    assert [r["version"] for r in summary["rollouts_rejected"]] == ["v3-missing"]
    assert max(times[v2]) >= START + SPAN * 3 / 4 + timedelta(minutes=15)  # v2 served on
    assert min(times[v2]) >= at  # the new model never scores what came before its time
    # the old one stops within a source batch (500 of 4,000 transactions over 2 h: 15 min)
    assert max(times[v1]) < at + timedelta(minutes=20), max(times[v1])
    assert {m["model_version"] for m in summary["windows"]} == {v1, v2}


def test_window_metrics_match_a_recount_of_the_outcomes(outcome) -> None:
    _, _, results, _ = outcome
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for o in results.outcomes:
        t = _time(o["ts"])
        start = t - timedelta(seconds=t.timestamp() % WINDOW.total_seconds())
        groups[(start.isoformat(), o["model_version"])].append(o)
    assert len(results.metrics) == len(groups)
    for m in results.metrics:
        rows = groups[(_time(m["window_start"]).isoformat(), m["model_version"])]
        labelled = [r for r in rows if r["is_fraud"] is not None]
        tp = sum(r["prediction"] == 1 and r["is_fraud"] == 1 for r in labelled)
        fp = sum(r["prediction"] == 1 and r["is_fraud"] == 0 for r in labelled)
        fn = sum(r["prediction"] == 0 and r["is_fraud"] == 1 for r in labelled)
        assert (m["predictions"], m["labelled"], m["unlabelled"]) == (
            len(rows),
            len(labelled),
            len(rows) - len(labelled),
        )
        assert m["precision"] == pytest.approx(tp / (tp + fp) if tp + fp else 0.0)
        assert m["recall"] == pytest.approx(tp / (tp + fn) if tp + fn else 0.0)


def test_both_models_catch_fraud_about_as_well_as_on_held_out_data(outcome) -> None:
    _, summary, _, models = outcome
    for version, q in summary["by_version"].items():
        assert q["frauds"] >= 15, (version, q)
        assert 0.25 <= q["precision"] <= 0.95, (version, q)
        assert 0.25 <= q["recall"] <= 0.95, (version, q)


def test_help_explains_itself() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "examples.enrich_and_evaluate", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert "--brokers" in proc.stdout and "--events" in proc.stdout


def _run_gate(messages: list, clock: list[datetime]) -> tuple[list, list]:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main

    from examples.enrich_and_evaluate.rollout import scheduled_rollouts

    flow = Dataflow("gate_test")
    out = scheduled_rollouts(
        "rollout",
        op.input("msgs", flow, TestingSource(messages)),
        op.input("clock", flow, TestingSource(clock)),
    )
    released, errs = [], []
    op.output("control", out.control, TestingSink(released))
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    return released, errs


def test_rollouts_wait_for_their_time_and_bad_messages_are_rejected() -> None:
    at = datetime(2026, 3, 2, 10, tzinfo=timezone.utc)
    msgs = [
        {"version": "v3", "model_path": "v3.onnx", "effective_at": (at + SPAN).isoformat()},
        {"version": "v2", "model_path": "v2.onnx", "effective_at": at.isoformat()},
        {"version": "now", "model_path": "now.onnx"},
        {"version": "v4", "model_path": "v4.onnx", "effective_at": "2026-03-02T10:00:00"},
        {"model_path": "nameless.onnx"},
    ]
    released, errs = _run_gate(msgs, [at - timedelta(minutes=1), at])
    versions = [m["version"] for m in released]
    # "now" and v2 as soon as due (their order depends on how the two inputs
    # interleave); v3's time never comes, so it is released at end of input
    assert sorted(versions[:2]) == ["now", "v2"] and versions[2:] == ["v3"]
    assert sorted(e.reason for e in errs) == [
        "a rollout message needs a non-empty text 'version'",
        "effective_at must carry a time zone; got '2026-03-02T10:00:00'",
    ]


def test_features_reject_what_cannot_be_scored_and_keep_the_rest() -> None:
    import bytewax.operators as op
    import polars as pl
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main

    from examples.enrich_and_evaluate.features import SCHEMA, add_features

    data = generate(20, n_accounts=50, unknown_share=0.0)
    table = dict(data.accounts)  # the last row of each account
    good = [{**t, **table[t["account_id"]]} for t in data.transactions if table[t["account_id"]]]
    negative = {**good[1], "amount": -5.0}
    no_limit = {**good[2], "credit_limit": None}  # an account row without it: null in a frame
    flow = Dataflow("features_test")
    frame = pl.DataFrame([good[0], negative, no_limit], infer_schema_length=None)
    out = add_features("features", op.input("in", flow, TestingSource([frame])))
    oks, errs = [], []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    [kept] = oks
    assert kept["tx_id"].to_list() == [good[0]["tx_id"]]
    assert kept["features"].dtype == pl.Array(pl.Float32, SCHEMA.width)
    assert sorted(e.error_type for e in errs) == ["InvalidFeature", "TypeError"]
    assert sorted(e.original[1]["tx_id"] for e in errs) == sorted(
        [negative["tx_id"], no_limit["tx_id"]]
    )


def test_docstring_examples_run() -> None:
    import doctest

    from examples.enrich_and_evaluate import data, features, rollout

    for module in (data, features, rollout):
        result = doctest.testmod(
            module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
        )
        assert result.attempted > 0 and result.failed == 0, module.__name__
