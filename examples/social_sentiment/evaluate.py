"""Score the pipeline's outputs against the tweets' human labels.

Two questions: how often is each post's label right (accuracy, per-class
recall, macro F1, confusion matrix), and how close is each hashtag window's
mean predicted sentiment to the mean of its posts' true polarities
(negative -1, neutral 0, positive +1). The windows are recomputed here by
brute force from the scored posts, so the window counts the dataflow
published can be checked too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from examples.social_sentiment.data import LABELS, START

__all__ = ["WindowTruth", "label_metrics", "window_truth", "window_metrics"]


@dataclass(frozen=True)
class WindowTruth:
    """One hashtag window recomputed from the scored posts."""

    posts: int
    true_mean: float
    predicted_mean: float


def label_metrics(predicted: Mapping[str, str], truth: Mapping[str, int]) -> dict[str, Any]:
    """Accuracy, per-class recall, macro F1 and the confusion matrix of predicted labels.

    Examples:
        >>> m = label_metrics({"a": "positive", "b": "negative"}, {"a": 2, "b": 1})
        >>> m["accuracy"], m["confusion"][1]
        (0.5, [1, 0, 0])
    """
    index = {name: i for i, name in enumerate(LABELS)}
    k = len(LABELS)
    confusion = np.zeros((k, k), dtype=np.int64)  # rows: truth, columns: predicted
    for post_id, label in predicted.items():
        confusion[truth[post_id], index[label]] += 1
    total = int(confusion.sum())
    tp = np.diag(confusion).astype(float)
    recall = tp / np.maximum(confusion.sum(axis=1), 1)
    precision = tp / np.maximum(confusion.sum(axis=0), 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return {
        "posts": total,
        "accuracy": round(float(tp.sum() / total), 4) if total else 0.0,
        "macro_f1": round(float(f1.mean()), 4),
        "recall": {name: round(float(r), 4) for name, r in zip(LABELS, recall)},
        "majority_baseline": round(float(confusion.sum(axis=1).max() / total), 4) if total else 0.0,
        "confusion": confusion.tolist(),
    }


def _windows_of(ts: datetime, window: timedelta, hop: timedelta) -> range:
    """Ids of the sliding windows (aligned to START) that contain ``ts``."""
    since = ts - START
    return range((since - window) // hop + 1, since // hop + 1)


def window_truth(
    posts: Iterable[Mapping[str, Any]],
    truth: Mapping[str, int],
    *,
    window: timedelta,
    hop: timedelta,
    exclude: Collection[tuple[str, str]] = (),
) -> dict[tuple[str, datetime], WindowTruth]:
    """Every (hashtag, window start) of the scored posts with its true and predicted mean.

    ``posts`` are scored posts as published (``ts`` a datetime, ``hashtags``,
    ``sentiment``); ``exclude`` holds ``(post_id, hashtag)`` pairs the
    dataflow reported late, which count in no window.

    Examples:
        >>> posts = [{"post_id": "a", "ts": START, "hashtags": ["x"], "sentiment": 0.5}]
        >>> w = window_truth(posts, {"a": 2}, window=timedelta(minutes=2), hop=timedelta(minutes=1))
        >>> sorted((tag, str(start.time()), t.posts, t.true_mean) for (tag, start), t in w.items())
        [('x', '17:59:00', 1, 1.0), ('x', '18:00:00', 1, 1.0)]
    """
    exclude = set(exclude)
    sums: dict[tuple[str, datetime], list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for post in posts:
        polarity = truth[post["post_id"]] - 1
        for wid in _windows_of(post["ts"], window, hop):
            start = START + wid * hop
            for tag in post["hashtags"]:
                if (post["post_id"], tag) in exclude:
                    continue
                acc = sums[(tag, start)]
                acc[0] += 1
                acc[1] += polarity
                acc[2] += post["sentiment"]
    return {key: WindowTruth(int(n), t / n, p / n) for key, (n, t, p) in sums.items()}


def window_metrics(
    truths: Mapping[tuple[str, datetime], WindowTruth], *, min_posts: int = 10
) -> dict[str, Any]:
    """How well window means track the truth, over windows with at least ``min_posts`` posts.

    Examples:
        >>> t = {("x", START): WindowTruth(10, 0.5, 0.4), ("y", START): WindowTruth(12, -0.5, -0.3)}
        >>> window_metrics(t)["mean_abs_error"]
        0.15
    """
    rows = [t for t in truths.values() if t.posts >= min_posts]
    if not rows:
        return {"windows": 0, "min_posts": min_posts}
    true = np.array([t.true_mean for t in rows])
    pred = np.array([t.predicted_mean for t in rows])
    corr = float(np.corrcoef(true, pred)[0, 1]) if len(rows) > 2 and true.std() > 0 else None
    return {
        "windows": len(rows),
        "min_posts": min_posts,
        "mean_abs_error": round(float(np.abs(true - pred).mean()), 4),
        "correlation": round(corr, 4) if corr is not None else None,
        "bias": round(float((pred - true).mean()), 4),
    }
