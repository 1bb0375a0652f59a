"""Shadow and canary scoring: a candidate model beside the live one, compared online.

:func:`shadow` scores every row with the live model (its results are the
flow's results, as from :func:`~streamml.operators.infer.infer`) and a share
of the rows — chosen by a hash of the key, so a key is always in or always
out — with a candidate, on a stream of its own: each scored row carries both
models' outputs, the candidate's under ``shadow_<output>`` with its version
in ``shadow_version``. The candidate scores after the live model, so it
never delays the live results. :class:`ShadowStats` compares the two as the
rows pass: how often a label output agrees, and the mean absolute and root
mean squared difference of a score (by the label join's
:class:`~streamml.operators.join.metrics.RegressionStats`). For metrics
against delayed labels, send ``shadow`` into
:func:`~streamml.operators.join.label_join` with
``prediction="shadow_<output>"`` and ``model_version="shadow_version"``.

State: the two ``infer`` steps snapshot their waiting rows as ``infer``
does, and the comparison's running sums are one ``stateful_batch`` state
(a ``streamml.infer.shadow`` record of
:mod:`streamml.operators._core.state`, version 1: ``rows``, ``equal``,
``numeric`` and the difference's ``n``, ``abs_sum``, ``sq_sum``), so after
a crash and resume the comparison goes on from where it was. Each Bytewax
batch of the candidate's results sends one small partial sum to that
state, never a row. Its eviction rule: none is needed, it is a fixed
handful of numbers.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic
from streamml.operators.join.metrics import RegressionStats

from streamml.errors import Rejected
from streamml.metrics import instrumented
from streamml.models import Model

from .._core.state import restore, snapshot
from .operator import infer
from .stats import InferStats

__all__ = ["ShadowOut", "ShadowStats", "in_share", "shadow"]

PREFIX = "shadow_"
STATE = "streamml.infer.shadow"
STATE_VERSION = 1
_KEY = "compare"  # the comparison is one state: its sums are a few numbers per batch

logger = logging.getLogger(__name__)


def in_share(key: Any, share: float) -> bool:
    """Whether ``key`` is among the ``share`` of keys the candidate scores (stable across runs).

    Examples:
        >>> in_share("sensor-1", 1.0), in_share("sensor-1", 0.0)
        (True, False)
        >>> sum(in_share(f"k{i}", 0.25) for i in range(10_000))  # about a quarter
        2499
    """
    return zlib.crc32(str(key).encode()) < share * 2**32


@dataclass
class _Counts:
    """Running sums of a comparison: rows, equal outputs and the difference's sums."""

    rows: int = 0
    equal: int = 0
    numeric: bool = True
    diff: RegressionStats = field(default_factory=RegressionStats)

    @classmethod
    def of(cls, live: np.ndarray, candidate: np.ndarray) -> _Counts:
        """The sums of one batch of both models' outputs."""
        counts = cls(len(live), int(np.sum(live == candidate)))
        counts.numeric = live.dtype.kind in "biuf" and candidate.dtype.kind in "biuf"
        if counts.numeric:
            diff = candidate.astype(np.float64) - live.astype(np.float64)
            counts.diff.n = len(diff)
            counts.diff.abs_sum = float(np.abs(diff).sum())
            counts.diff.sq_sum = float(diff @ diff)
        return counts

    def merge(self, other: _Counts) -> None:
        self.rows += other.rows
        self.equal += other.equal
        self.numeric = self.numeric and other.numeric
        if self.numeric:
            self.diff.merge(other.diff)

    def to_data(self) -> dict[str, Any]:
        """The sums as builtins, for a versioned snapshot.

        Examples:
            >>> c = _Counts.of(np.array([1.0, 2.0]), np.array([1.0, 4.0]))
            >>> c.to_data()
            {'rows': 2, 'equal': 1, 'numeric': True, 'n': 2, 'abs_sum': 2.0, 'sq_sum': 4.0}
            >>> _Counts.from_data(c.to_data()).to_data() == c.to_data()
            True
        """
        return {"rows": self.rows, "equal": self.equal, "numeric": self.numeric} | (
            self.diff.to_data()
        )

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> _Counts:
        """The sums :meth:`to_data` wrote."""
        return cls(data["rows"], data["equal"], data["numeric"], RegressionStats.from_data(data))


class ShadowStats:
    """The live and candidate models compared on the rows both scored, updated once per batch.

    The sums behind it are the step's recovery state: after a crash and a
    resume it goes on from the snapshot, as if the run had not stopped. They
    are one state per step, so with several Bytewax processes the process
    that holds it has the totals (the others read no rows).

    Attributes:
        rows: Rows both models scored.
        agreement: Share of rows whose ``compare`` output is equal (``None``: no rows).
        mae: Mean absolute difference of ``compare`` (``None`` when it is
            not numeric, or no rows).
        rmse: Root mean squared difference of ``compare`` (likewise).

    Examples:
        Read it after a run, or from a timer while one runs (see :func:`shadow`):

        >>> ShadowStats().as_dict()
        {'rows': 0, 'agreement': None, 'mae': None, 'rmse': None}
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = _Counts()

    @property
    def rows(self) -> int:
        return self._counts.rows

    @property
    def agreement(self) -> float | None:
        counts = self._counts
        return counts.equal / counts.rows if counts.rows else None

    @property
    def mae(self) -> float | None:
        return self._counts.diff.result()["mae"] if self._counts.numeric else None

    @property
    def rmse(self) -> float | None:
        return self._counts.diff.result()["rmse"] if self._counts.numeric else None

    def as_dict(self) -> dict[str, Any]:
        """The comparison as a dict (for a log line or a metrics exporter)."""
        with self._lock:
            return {
                "rows": self.rows,
                "agreement": self.agreement,
                "mae": self.mae,
                "rmse": self.rmse,
            }

    def _merge(self, counts: _Counts) -> None:
        with self._lock:
            self._counts.merge(counts)


class _CompareLogic(StatefulBatchLogic):
    """The comparison's state: its sums, merged from each batch's partial, kept in ``stats`` too."""

    def __init__(self, stats: ShadowStats, counts: _Counts) -> None:
        self.stats = stats
        self.counts = counts
        stats._merge(counts)  # a resumed state's sums count in this process's stats

    def on_batch(self, values: list[_Counts]) -> tuple[list[Any], bool]:
        for part in values:
            self.counts.merge(part)
            self.stats._merge(part)
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> dict[str, Any]:
        return snapshot(STATE, STATE_VERSION, self.counts.to_data())


@dataclass(frozen=True)
class ShadowOut:
    """The streams of a :func:`shadow` step.

    Attributes:
        oks: The live model's results, as :attr:`InferOut.oks`.
        errs: Rejections of both models (the candidate's name its step).
        shadow: The candidate's share of rows, with both models' outputs.
        live_stats: The live step's :class:`InferStats`.
        candidate_stats: The candidate step's :class:`InferStats`.
        stats: The online comparison, :class:`ShadowStats`.
    """

    oks: Stream[Any]
    errs: Stream[Rejected]
    shadow: Stream[Any]
    live_stats: InferStats
    candidate_stats: InferStats
    stats: ShadowStats


def _picker(share: float, key: str | None) -> Callable[[Any], Any]:
    def pick(item: Any) -> Any:
        if isinstance(item, pl.DataFrame):
            if share >= 1.0:
                return item
            if key is None:  # the live results are whole; only the comparison lacks these rows
                logger.warning("shadow: a frame without key= cannot be shared by key; skipped")
                return None
            keep = [in_share(k, share) for k in item.get_column(key).to_list()]
            out = item.filter(pl.Series(keep, dtype=pl.Boolean))
            return out if len(out) else None
        return item if in_share(item[0], share) else None

    return pick


def _measurer(name: str) -> Callable[[list[Any]], list[tuple[str, _Counts]]]:
    """A batch of the candidate's results to one partial sum of the comparison."""

    def measure(items: list[Any]) -> list[tuple[str, _Counts]]:
        counts, rows = _Counts(), []
        for item in items:
            if isinstance(item, pl.DataFrame):
                live = item.get_column(name).to_numpy()
                counts.merge(_Counts.of(live, item.get_column(PREFIX + name).to_numpy()))
            else:
                rows.append(item[1])
        if rows:
            live = np.asarray([r[name] for r in rows])
            counts.merge(_Counts.of(live, np.asarray([r[PREFIX + name] for r in rows])))
        return [(_KEY, counts)] if counts.rows else []

    return measure


@operator
@instrumented
def shadow(
    step_id: str,
    up: Stream[Any],
    live: Model,
    candidate: Model,
    *,
    compare: str,
    share: float = 1.0,
    key: str | None = None,
    **kwargs: Any,
) -> ShadowOut:
    """Score with the live model and, on a stable share of keys, with a candidate beside it.

    Use it to try a new model version on real traffic before it serves: in
    shadow (``share=1.0``: every row, nobody sees its results) or as a
    canary on a share of the keys. The live results are the step's ``oks``,
    exactly as :func:`~streamml.operators.infer.infer` gives them; the
    candidate's are on ``shadow``, each row with both outputs, and
    ``stats`` compares them online.

    Args:
        step_id: Unique ID.
        up: Frames or ``(key, event)`` pairs, as for ``infer``.
        live: The model whose results the flow uses.
        candidate: The model to try; it must take the same inputs.
        compare: The live output field to compare with the candidate's.
        share: The share of keys the candidate scores, in ``[0, 1]``.
        key: The key column of frames (needed when ``share < 1``: without
            it a frame's rows are scored by the live model only, with a
            warning in the log).
        **kwargs: ``infer``'s arguments (``inputs``, ``max_batch``, ...) for both models.

    Returns:
        :class:`ShadowOut`.

    Examples:
        >>> import bytewax.operators as op
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSink, TestingSource, run_main
        >>> from streamml.models import CallableModel
        >>> v1 = CallableModel(lambda x: x.sum(axis=1), outputs="score", shape=(2,), version="v1")
        >>> v2 = CallableModel(lambda x: x[:, 0] * 2, outputs="score", shape=(2,), version="v2")
        >>> events = [("a", {"features": [1.0, 1.0]}), ("b", {"features": [1.0, 2.0]})]
        >>> flow = Dataflow("shadow_eg")
        >>> out = shadow("s", op.input("in", flow, TestingSource(events)), v1, v2, compare="score")
        >>> oks, seen = [], []
        >>> op.output("oks", out.oks, TestingSink(oks))
        >>> op.output("shadow", out.shadow, TestingSink(seen))
        >>> run_main(flow)
        >>> [e["score"] for _, e in oks]
        [2.0, 3.0]
        >>> [(e["score"], e["shadow_score"], e["shadow_version"]) for _, e in seen]
        [(2.0, 2.0, 'v2'), (3.0, 2.0, 'v2')]
        >>> out.stats.as_dict()
        {'rows': 2, 'agreement': 0.5, 'mae': 0.5, 'rmse': 0.7071067811865476}
    """
    if not (isinstance(share, (int, float)) and 0.0 <= share <= 1.0):
        raise ValueError(f"share must be a number in [0, 1]; got {share!r}")
    if "outputs" in kwargs or "version_field" in kwargs:
        raise ValueError(
            "shadow names the outputs itself; pass neither outputs= nor version_field="
        )
    if compare not in live.outputs:
        raise ValueError(
            f"compare must be one of the live model's outputs {list(live.outputs)}; got {compare!r}"
        )
    live_out = infer("live", up, live, key=key, **kwargs)
    picked = op.filter_map("pick", live_out.oks, _picker(float(share), key))
    renamed = {name: PREFIX + name for name in candidate.outputs}
    cand_out = infer(
        "candidate",
        picked,
        candidate,
        key=key,
        outputs=renamed,
        version_field="shadow_version",
        **kwargs,
    )
    stats = ShadowStats()

    def build(resume: Any) -> _CompareLogic:
        if resume is None:
            return _CompareLogic(stats, _Counts())
        data = restore(resume, kind=STATE, version=STATE_VERSION)
        return _CompareLogic(stats, _Counts.from_data(data))

    parts = op.flat_map_batch("measure", cand_out.oks, _measurer(compare))
    op.stateful_batch("compare", parts, build)
    errs = op.merge("errs", live_out.errs, cand_out.errs)
    return ShadowOut(live_out.oks, errs, cand_out.oks, live_out.stats, cand_out.stats, stats)
