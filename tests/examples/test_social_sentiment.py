"""The sentiment example on the session's broker: every post accounted for, accuracy in range.

The model is built once per machine (a small head on 500 tweets, cached
under ``$STREAMML_CACHE``, about 20 s on a fresh machine); the posts are
held-out real tweets whose human labels are the ground truth.
"""

from __future__ import annotations

import doctest
import importlib
import json
from pathlib import Path

import numpy as np
import pytest

from examples.social_sentiment import __main__ as cli
from examples.social_sentiment.data import load_corpus, split_corpus
from examples.social_sentiment.model import build_model, load_tokenizer, tokenize
from streamml.broker import EmbeddedBroker
from streamml.models import OnnxModel

pytestmark = pytest.mark.integration

TRAIN_SIZE = 500
EVENTS = 300
CORRUPT = 10


@pytest.fixture(scope="module")
def built():
    return build_model(train_size=TRAIN_SIZE)


def test_pipeline_accounts_for_every_post_and_scores_within_range(
    broker: EmbeddedBroker, built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        [
            "--brokers",
            broker.bootstrap,
            "--events",
            str(EVENTS),
            "--corrupt",
            str(CORRUPT),
            "--train-size",
            str(TRAIN_SIZE),
            "--rate",
            "1.0",
            "--quiet",
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "summary" in out and "posts/s" in out
    s = json.loads((tmp_path / "summary.json").read_text())

    # nothing lost: every post is scored or dead-lettered, and only the corrupt ones are
    assert s["events_in"] == EVENTS + CORRUPT
    assert s["scored"] == EVENTS and s["dead_lettered_posts"] == CORRUPT
    assert s["accounted_for"]
    assert s["dead_letter_reasons"] == {"DecodeError": 4, "InvalidPost": 4, "UnknownSchema": 2}

    # the published windows are exactly the windows a brute-force recount finds
    assert s["window_rows_match_recount"] and s["hashtag_windows"] > 0
    assert s["late_hashtag_signals"] == 0

    # accuracy against the human labels: well above the majority class, as in cross-validation
    labels = s["labels"]
    assert labels["posts"] == EVENTS
    assert 0.55 <= labels["accuracy"] <= 0.85
    assert labels["accuracy"] >= labels["majority_baseline"] + 0.1
    assert abs(labels["accuracy"] - s["model"]["cv_accuracy"]) < 0.12
    assert min(labels["recall"].values()) > 0.25
    # #deflategate was a scandal: its windows must come out clearly negative, like the truth
    top = {t["hashtag"]: t for t in s["top_hashtags"]}
    assert top["deflategate"]["true_mean"] < -0.2
    assert top["deflategate"]["predicted_mean"] < -0.1
    if s["windows"]["windows"] >= 3:
        assert s["windows"]["mean_abs_error"] < 0.3


def test_late_posts_are_dead_lettered_and_left_out_of_windows(
    broker: EmbeddedBroker, built, tmp_path: Path
) -> None:
    """A sparse stream read a partition batch at a time: some posts trail their hashtag's watermark."""
    args = ["--brokers", broker.bootstrap, "--events", "150", "--corrupt", "0", "--quiet"]
    args += ["--train-size", str(TRAIN_SIZE), "--rate", "0.1", "--max-delay", "5"]
    assert cli.main([*args, "--out", str(tmp_path)]) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["late_hashtag_signals"] > 0
    assert s["window_dead_letters"] == s["late_hashtag_signals"]
    assert s["scored"] == 150 and s["dead_lettered_posts"] == 0 and s["accounted_for"]
    assert s["window_rows_match_recount"]


def test_scores_do_not_depend_on_batch_company(built) -> None:
    """Trimming padding to the batch's longest post must not change any post's result."""
    model = OnnxModel(built.path, intra_op_threads=1)
    _, pool = split_corpus(load_corpus(), train_size=TRAIN_SIZE)
    texts = [t.text for t in pool[:24]] + ["ok", "#a"]
    ids, mask = tokenize(load_tokenizer(), texts)
    together = model.predict({"input_ids": ids, "attention_mask": mask})
    for i in (0, 7, len(texts) - 1):
        alone = model.predict({"input_ids": ids[i : i + 1], "attention_mask": mask[i : i + 1]})
        np.testing.assert_allclose(
            alone["probabilities"][0], together["probabilities"][i], atol=2e-5
        )
        assert alone["label"][0] == together["label"][i]
    p = together["probabilities"]
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(together["sentiment"], p[:, 2] - p[:, 0], atol=1e-6)


def test_training_and_streamed_tweets_are_disjoint() -> None:
    corpus = load_corpus()
    train, rest = split_corpus(corpus, train_size=TRAIN_SIZE)
    assert len(train) + len(rest) == len(corpus)
    assert not {t.text.lower() for t in train} & {t.text.lower() for t in rest}


def test_help_explains_itself(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--brokers" in text and "--events" in text and "--train-size" in text


@pytest.mark.parametrize("module", ["data", "model", "flow", "evaluate"])
def test_docstring_examples_run(module: str) -> None:
    mod = importlib.import_module(f"examples.social_sentiment.{module}")
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(mod, optionflags=flags)
    assert result.failed == 0
    assert result.attempted > 0
