"""A join shard's state from the value Bytewax resumes its logic with.

Every stateful join logic is built from Bytewax's ``resume``: ``None`` on a
fresh start, a versioned record (:func:`~streamml.operators._core.state.snapshot`)
of this or an earlier release, or a pickled state of the release before
versioned snapshots (see :mod:`streamml.operators.join._legacy`), which is
read as version 0. :func:`resumed` turns each into the current version's
data, so a join's logic reads all three the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from streamml.operators._core.state import restore, snapshot
from streamml.operators.join._legacy import is_legacy

__all__ = ["resumed"]


def resumed(
    resume: Any,
    *,
    kind: str,
    version: int,
    upgrades: Mapping[int, Callable[[Any], Any]] | None = None,
) -> Any | None:
    """The data of ``resume`` upgraded to ``version``; ``None`` to start empty.

    A pickled state of the previous release is version 0, so ``upgrades[0]``
    reads it; a record of another kind, or of a newer version, raises
    :class:`~streamml.operators._core.state.StateVersionError` saying what to do.

    Examples:
        >>> resumed(None, kind="streamml.example", version=1) is None
        True
        >>> resumed(snapshot("streamml.example", 0, {"n": 3}), kind="streamml.example",
        ...         version=1, upgrades={0: lambda old: {**old, "seen": []}})
        {'n': 3, 'seen': []}
    """
    if resume is None:
        return None
    if is_legacy(resume):
        resume = snapshot(kind, 0, resume)
    return restore(resume, kind=kind, version=version, upgrades=upgrades)
