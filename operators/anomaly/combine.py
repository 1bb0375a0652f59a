"""Several detectors as one: :class:`Combined` runs scorers side by side and votes or pools their scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
from streamml.operators import _validate
from streamml.operators.anomaly.scorers import Ewma, ZScore, score_runs

__all__ = ["Combined"]

_HOW = ("max", "mean", "vote")


@dataclass(frozen=True)
class Combined:
    """Run several scorers on the same points and combine their scores into one.

    Use it where no single detector is trusted alone: a point (and so a
    window of :func:`~streamml.operators.anomaly.anomaly_windows`) counts
    when several detectors agree, or the strongest of them speaks. Every
    scorer's score is already normalised, in sigmas of its own baseline, so
    the scores are comparable:

    - ``how="max"``: the largest score (any detector alone is enough);
    - ``how="mean"``: the mean score (detectors pool their evidence);
    - ``how="vote"``: how many scorers score above ``vote_above``; a k-of-n
      vote is ``threshold=FixedThreshold(k - 0.5)``.

    The driving field is the one of the scorer with the largest score. Each
    scorer keeps its own state, window and ``exclude_above``; the combined
    state is theirs, evicted when all of theirs are.

    Args:
        scorers: Two or more :class:`ZScore`, :class:`RobustZScore` or
            :class:`Ewma`; the fields read are all of theirs.
        how: ``"max"``, ``"mean"`` or ``"vote"``.
        vote_above: The score above which a scorer votes (``how="vote"``).

    Examples:
        >>> from datetime import timedelta
        >>> from streamml.operators.anomaly import Ewma, RobustZScore
        >>> both = Combined([RobustZScore("temp", window=timedelta(minutes=10)),
        ...                  Ewma(["temp", "vibration"], half_life=timedelta(minutes=2))],
        ...                 how="vote", vote_above=5.0)
        >>> both.fields
        ('temp', 'vibration')
    """

    scorers: Sequence[ZScore | Ewma]
    how: str = "max"
    vote_above: float = 4.0
    fields: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        parts = tuple(self.scorers) if isinstance(self.scorers, Sequence) else ()
        if len(parts) < 2:
            raise ValueError(f"scorers must be a list of two or more scorers; got {self.scorers!r}")
        for part in parts:
            _validate.one_of("scorers[i]", part, (ZScore, Ewma), "ZScore('x', window=...)")
        object.__setattr__(self, "scorers", parts)
        if self.how not in _HOW:
            raise ValueError(f"how must be one of {', '.join(_HOW)}; got {self.how!r}")
        _validate.number("vote_above", self.vote_above)
        names = tuple(dict.fromkeys(f for part in parts for f in part.fields))
        object.__setattr__(self, "fields", names)

    @property
    def span(self) -> timedelta:
        """The longest history one of the scorers keeps."""
        return max(p.window if isinstance(p, ZScore) else p.ttl for p in self.scorers)

    def _state(self) -> _CombinedState:
        return _CombinedState(self)


class _CombinedState:
    """Each scorer's state. Eviction: each scorer's own; empty once all of theirs are."""

    __slots__ = ("parts", "cols", "how", "vote_above")

    def __init__(self, cfg: Combined) -> None:
        self.parts = [p._state() for p in cfg.scorers]
        at = {name: i for i, name in enumerate(cfg.fields)}
        self.cols = [np.array([at[f] for f in p.fields], dtype=np.int64) for p in cfg.scorers]
        self.how, self.vote_above = cfg.how, cfg.vote_above

    def expires_at(self) -> int:
        return max(p.expires_at() for p in self.parts)

    def update(self, ts: int, xs: tuple[float, ...]) -> tuple[float, int]:
        return self.update_many((ts,), (xs,))[0]

    def update_many(
        self, ts: Sequence[int], xs: Sequence[tuple[float, ...]]
    ) -> list[tuple[float, int]]:
        """:meth:`runs` of this one state."""
        if not xs:
            return []
        x = np.array(xs, dtype=np.float64)
        z, f = self.runs([self], np.asarray(ts, dtype=np.int64), x, [(0, len(xs))])
        return list(zip(z.tolist(), f.tolist()))

    @staticmethod
    def runs(
        states: Sequence[_CombinedState],
        ts: np.ndarray,
        x: np.ndarray,
        bounds: Sequence[tuple[int, int]],
    ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`~streamml.operators.anomaly.scorers.score_runs` of many keys' combined states.

        Each scorer takes its fields of every key's run in one ``score_runs``
        call; the scores are then combined for all rows at once, so the NumPy
        work is per batch, not per key. ``bounds`` cover every row.
        """
        first = states[0]
        z = np.empty((len(first.parts), len(x)))
        drv = np.empty((len(first.parts), len(x)), dtype=np.int64)
        for j, cols in enumerate(first.cols):
            z[j], f = score_runs([st.parts[j] for st in states], ts, x[:, cols], bounds)
            drv[j] = cols[f]
        best = z.argmax(axis=0)  # the first scorer with the largest score
        field_of = drv[best, np.arange(len(x))]
        if first.how == "max":
            out = z.max(axis=0)
        elif first.how == "mean":
            out = z.mean(axis=0)
        else:
            out = (z > first.vote_above).sum(axis=0).astype(np.float64)
        return out, field_of

    def snapshot(self) -> dict[str, Any]:
        return {"parts": [p.snapshot() for p in self.parts]}

    def restore(self, snap: dict[str, Any]) -> None:
        for part, rec in zip(self.parts, snap["parts"], strict=True):
            part.restore(rec)
