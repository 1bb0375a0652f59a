"""Mergeable model-evaluation statistics: classification and regression metrics from running counts.

The label join keeps one of these per (window, model version) in every shard
and merges them when the window closes, so metrics cost a few dict updates
per labelled prediction and nothing is recomputed from stored pairs. The
results follow scikit-learn's definitions (``accuracy_score``,
``precision_recall_fscore_support`` with ``zero_division=0``, ``log_loss``,
``mean_absolute_error``, ``root_mean_squared_error``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from itertools import chain
from typing import Any, Literal

import numpy as np

__all__ = [
    "Average",
    "ClassificationStats",
    "RegressionStats",
    "classification_metrics",
    "regression_metrics",
]

Average = Literal["binary", "macro", "micro", "weighted"]

_EPS = 2.220446049250313e-16  # float64 machine epsilon, scikit-learn's log_loss clip


class ClassificationStats:
    """Confusion counts and summed log loss of labelled classifications.

    ``add(y_true, y_pred, proba)``: ``proba`` is the predicted probability of
    ``pos_label`` (binary) or a mapping class -> probability, or ``None``.

    Examples:
        >>> s = ClassificationStats()
        >>> for t, p, pr in [(1, 1, 0.9), (0, 1, 0.6), (1, 0, 0.4), (0, 0, 0.2)]:
        ...     s.add(t, p, pr)
        >>> s.result()
        {'accuracy': 0.5, 'precision': 0.5, 'recall': 0.5, 'f1': 0.5, 'log_loss': 0.540...}
    """

    __slots__ = ("confusion", "n", "loss_sum", "loss_n", "pos_label", "average")

    def __init__(self, pos_label: Hashable = 1, average: Average = "binary") -> None:
        self.confusion: dict[tuple[Hashable, Hashable], int] = {}
        self.n = 0
        self.loss_sum = 0.0
        self.loss_n = 0
        self.pos_label = pos_label
        self.average = average

    def add(self, y_true: Hashable, y_pred: Hashable, proba: Any = None) -> None:
        """Count one labelled prediction (raises on a probability that is not a number)."""
        if type(proba) is float:  # the usual binary probability: no ABC isinstance check
            p = proba if y_true == self.pos_label else 1.0 - proba
            self.loss_sum -= math.log(min(max(p, _EPS), 1.0 - _EPS))
            self.loss_n += 1
        elif proba is not None:
            if isinstance(proba, Mapping):
                total = math.fsum(proba.values())
                p = proba.get(y_true, 0.0) / total
            else:
                p = float(proba) if y_true == self.pos_label else 1.0 - float(proba)
            self.loss_sum -= math.log(min(max(p, _EPS), 1.0 - _EPS))
            self.loss_n += 1
        pair = (y_true, y_pred)
        self.confusion[pair] = self.confusion.get(pair, 0) + 1
        self.n += 1

    def add_many(self, y_true: list, y_pred: list, proba: list | None = None) -> None:
        """Count labelled predictions in order: the same counts and sums as :meth:`add` one by one.

        The usual batch (every probability a float, or none given) is counted
        without a call per prediction; the sum of log losses is still taken
        in order, so it equals the one-by-one sum to the bit.

        Examples:
            >>> a, b = ClassificationStats(), ClassificationStats()
            >>> a.add_many([1, 0, 1], [1, 1, 0], [0.9, 0.6, 0.4])
            >>> for t, p, pr in [(1, 1, 0.9), (0, 1, 0.6), (1, 0, 0.4)]:
            ...     b.add(t, p, pr)
            >>> a.result() == b.result() and a.confusion == b.confusion
            True
        """
        kinds = set() if proba is None else set(map(type, proba))
        if kinds and kinds != {float}:
            if kinds != {type(None)}:  # no log loss for a None probability
                for t, p, pr in zip(y_true, y_pred, proba, strict=True):  # type: ignore[arg-type]
                    self.add(t, p, pr)
                return
        elif proba:
            pos = self.pos_label
            p = np.array(proba, dtype=np.float64)
            is_pos = np.fromiter([t == pos for t in y_true], bool, len(y_true))
            p = np.clip(np.where(is_pos, p, 1.0 - p), _EPS, 1.0 - _EPS).tolist()
            # math.log as add() takes it; accumulate sums in order: the float sum add() makes
            terms = np.fromiter(chain((self.loss_sum,), map(math.log, p)), np.float64, len(p) + 1)
            self.loss_sum = float(np.subtract.accumulate(terms)[-1])
            self.loss_n += len(p)
        confusion = self.confusion
        for pair, c in Counter(zip(y_true, y_pred, strict=True)).items():  # first seen, first in
            confusion[pair] = confusion.get(pair, 0) + c
        self.n += len(y_true)

    def to_data(self) -> dict[str, Any]:
        """The counts as builtins, for a versioned snapshot (see :meth:`from_data`).

        Examples:
            >>> s = ClassificationStats(pos_label="y")
            >>> s.add("y", "n", 0.3)
            >>> ClassificationStats.from_data(s.to_data()).result() == s.result()
            True
        """
        return {
            "confusion": [[t, p, c] for (t, p), c in self.confusion.items()],
            "n": self.n,
            "loss_sum": self.loss_sum,
            "loss_n": self.loss_n,
            "pos_label": self.pos_label,
            "average": self.average,
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ClassificationStats:
        """The stats :meth:`to_data` wrote."""
        stats = cls(data["pos_label"], data["average"])
        stats.confusion = {(t, p): c for t, p, c in data["confusion"]}
        stats.n, stats.loss_sum, stats.loss_n = data["n"], data["loss_sum"], data["loss_n"]
        return stats

    def merge(self, other: ClassificationStats) -> None:
        """Add another window part's counts into this one."""
        for pair, c in other.confusion.items():
            self.confusion[pair] = self.confusion.get(pair, 0) + c
        self.n += other.n
        self.loss_sum += other.loss_sum
        self.loss_n += other.loss_n

    def result(self) -> dict[str, float | None]:
        """Accuracy, precision, recall, F1 and log loss (``None`` when undefined)."""
        if self.n == 0:
            return dict.fromkeys(("accuracy", "precision", "recall", "f1", "log_loss"))
        correct = sum(c for (t, p), c in self.confusion.items() if t == p)
        tp: dict[Hashable, int] = {}
        pred: dict[Hashable, int] = {}
        true: dict[Hashable, int] = {}
        for (t, p), c in self.confusion.items():
            pred[p] = pred.get(p, 0) + c
            true[t] = true.get(t, 0) + c
            if t == p:
                tp[t] = tp.get(t, 0) + c
        if self.average == "binary":
            classes = [self.pos_label]
        else:
            classes = list(dict.fromkeys([*true, *pred]))
        precision, recall, f1 = _prf(classes, tp, pred, true, self.average)
        return {
            "accuracy": correct / self.n,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "log_loss": self.loss_sum / self.loss_n if self.loss_n else None,
        }


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _prf(
    classes: list[Hashable],
    tp: dict[Hashable, int],
    pred: dict[Hashable, int],
    true: dict[Hashable, int],
    average: Average,
) -> tuple[float, float, float]:
    if average == "micro":
        t = sum(tp.get(c, 0) for c in classes)
        p = _ratio(t, sum(pred.get(c, 0) for c in classes))
        r = _ratio(t, sum(true.get(c, 0) for c in classes))
        return p, r, _ratio(2 * p * r, p + r)
    ps, rs, fs, ws = [], [], [], []
    for c in classes:
        p = _ratio(tp.get(c, 0), pred.get(c, 0))
        r = _ratio(tp.get(c, 0), true.get(c, 0))
        ps.append(p)
        rs.append(r)
        fs.append(_ratio(2 * p * r, p + r))
        ws.append(true.get(c, 0))
    if average == "weighted":
        total = sum(ws)
        return tuple(
            _ratio(sum(w * x for w, x in zip(ws, xs, strict=True)), total) for xs in (ps, rs, fs)
        )  # type: ignore[return-value]
    k = len(classes)
    return sum(ps) / k, sum(rs) / k, sum(fs) / k


class RegressionStats:
    """Count, summed absolute and squared errors of labelled regressions.

    Examples:
        >>> s = RegressionStats()
        >>> for t, p in [(1.0, 1.5), (2.0, 1.0), (3.0, 3.0)]:
        ...     s.add(t, p)
        >>> s.result()
        {'mae': 0.5, 'rmse': 0.645...}
    """

    __slots__ = ("n", "abs_sum", "sq_sum")

    def __init__(self) -> None:
        self.n = 0
        self.abs_sum = 0.0
        self.sq_sum = 0.0

    def add(self, y_true: float, y_pred: float, proba: Any = None) -> None:
        """Count one labelled prediction (``proba`` is ignored)."""
        err = float(y_pred) - float(y_true)
        self.abs_sum += abs(err)
        self.sq_sum += err * err
        self.n += 1

    def add_many(self, y_true: list, y_pred: list, proba: list | None = None) -> None:
        """Count labelled predictions in order (the sums :meth:`add` one by one makes)."""
        abs_sum, sq_sum = self.abs_sum, self.sq_sum
        for t, p in zip(y_true, y_pred, strict=True):
            err = float(p) - float(t)
            abs_sum += abs(err)
            sq_sum += err * err
        self.abs_sum, self.sq_sum = abs_sum, sq_sum
        self.n += len(y_true)

    def to_data(self) -> dict[str, Any]:
        """The sums as builtins, for a versioned snapshot (see :meth:`from_data`).

        Examples:
            >>> s = RegressionStats()
            >>> s.add(1.0, 2.5)
            >>> RegressionStats.from_data(s.to_data()).result() == s.result()
            True
        """
        return {"n": self.n, "abs_sum": self.abs_sum, "sq_sum": self.sq_sum}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> RegressionStats:
        """The stats :meth:`to_data` wrote."""
        stats = cls()
        stats.n, stats.abs_sum, stats.sq_sum = data["n"], data["abs_sum"], data["sq_sum"]
        return stats

    def merge(self, other: RegressionStats) -> None:
        """Add another window part's sums into this one."""
        self.n += other.n
        self.abs_sum += other.abs_sum
        self.sq_sum += other.sq_sum

    def result(self) -> dict[str, float | None]:
        """Mean absolute error and root mean squared error (``None`` when empty)."""
        if self.n == 0:
            return {"mae": None, "rmse": None}
        return {"mae": self.abs_sum / self.n, "rmse": math.sqrt(self.sq_sum / self.n)}


def classification_metrics(
    y_true: Iterable[Hashable],
    y_pred: Iterable[Hashable],
    proba: Iterable[Any] | None = None,
    *,
    pos_label: Hashable = 1,
    average: Average = "binary",
) -> dict[str, float | None]:
    """Accuracy, precision, recall, F1 and log loss of labelled predictions.

    The same numbers the label join reports per window, for a finite list.

    Examples:
        >>> classification_metrics([1, 0, 1, 1], [1, 0, 0, 1], [0.8, 0.3, 0.4, 0.9])
        {'accuracy': 0.75, 'precision': 1.0, 'recall': 0.666..., 'f1': 0.8, 'log_loss': 0.4...}
    """
    stats = ClassificationStats(pos_label, average)
    if proba is None:
        for t, p in zip(y_true, y_pred, strict=True):
            stats.add(t, p)
    else:
        for t, p, pr in zip(y_true, y_pred, proba, strict=True):
            stats.add(t, p, pr)
    return stats.result()


def regression_metrics(y_true: Iterable[float], y_pred: Iterable[float]) -> dict[str, float | None]:
    """Mean absolute error and RMSE of labelled predictions.

    Examples:
        >>> regression_metrics([1.0, 2.0], [2.0, 2.0])
        {'mae': 0.5, 'rmse': 0.707...}
    """
    stats = RegressionStats()
    for t, p in zip(y_true, y_pred, strict=True):
        stats.add(t, p)
    return stats.result()
