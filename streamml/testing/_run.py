"""Run a dataflow, or one operator on lists of items, and keep every output stream."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import bytewax.operators as op
import polars as pl
from bytewax.dataflow import Dataflow, Stream
from bytewax.testing import TestingSink, TestingSource, run_main

__all__ = ["Outputs", "capture", "run_operator"]


def capture(streams: Mapping[str, Stream[Any]]) -> dict[str, list[Any]]:
    """Send each named stream to a list; the lists fill when the flow runs.

    Examples:
        >>> flow = Dataflow("capture_doc")
        >>> nums = op.input("in", flow, TestingSource([1, 2, 3]))
        >>> outs = capture({"odd": op.filter("odd", nums, lambda n: n % 2 == 1)})
        >>> run_main(flow)
        >>> outs
        {'odd': [1, 3]}
    """
    outs: dict[str, list[Any]] = {}
    for name, stream in streams.items():
        op.output(f"capture_{name}", stream, TestingSink(outs.setdefault(name, [])))
    return outs


@dataclass
class Outputs:
    """Every output stream of an operator run by :func:`run_operator`, as lists.

    ``oks`` holds what the operator's ``oks`` stream (or the stream it
    returned) emitted, ``errs`` and ``late`` its rejections
    (:class:`streamml.errors.Rejected`); ``other`` any further streams of
    its result, by attribute name.
    """

    oks: list[Any] = field(default_factory=list)
    errs: list[Any] = field(default_factory=list)
    late: list[Any] = field(default_factory=list)
    other: dict[str, list[Any]] = field(default_factory=dict)

    def frame(self) -> pl.DataFrame:
        """The ``oks`` frames as one frame (empty when there are none)."""
        return pl.concat(self.oks, how="diagonal_relaxed") if self.oks else pl.DataFrame()

    def rejected(self) -> list[tuple[str, Any]]:
        """``(error_type, original)`` of every rejection, ``errs`` then ``late``."""
        return [(r.error_type, r.original) for r in [*self.errs, *self.late]]


def _streams(result: Any) -> dict[str, Stream[Any]]:
    """The streams of an operator's result: itself, or its dataclass / named-tuple fields."""
    if isinstance(result, Stream):
        return {"oks": result}
    fields = getattr(result, "__dataclass_fields__", None) or getattr(result, "_fields", ())
    found = {name: getattr(result, name) for name in fields}
    streams = {name: s for name, s in found.items() if isinstance(s, Stream)}
    if not streams:
        raise TypeError(f"the operator returned {type(result).__name__}, which holds no streams")
    return streams


def run_operator(
    build: Callable[[Stream[Any]], Any],
    items: Sequence[Any],
    *,
    batch_size: int = 1,
    key: Callable[[Any], str] | None = None,
) -> Outputs:
    """Run ``build`` on a stream of ``items`` in a fresh dataflow and return every output.

    Use it to test a step of your own flow: give it the items (events,
    ``(key, event)`` pairs or frames) and a function that applies the
    operator to the input stream. With ``key``, the input is keyed by it
    first (``op.key_on``). The operator may return a stream, or a result
    with ``oks``/``errs``/``late`` streams (any stream attributes are kept).

    Args:
        build: ``up -> result``: applies the operator under test.
        items: The input, in arrival order.
        batch_size: Items per source batch (Bytewax's ``TestingSource``).
        key: Key each item by this function before ``build``.

    Returns:
        :class:`Outputs` with every stream's items.

    Examples:
        >>> from datetime import datetime, timedelta, timezone
        >>> from streamml.operators.featurize import rolling
        >>> t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> events = [{"id": "a", "s": 0, "x": 1.0}, {"id": "a", "s": 5, "x": 3.0},
        ...           {"id": "a", "s": 1, "x": 9.0}, {"id": "a", "s": 6, "x": "?"}]
        >>> out = run_operator(
        ...     lambda up: rolling("r", up, timestamp=lambda e: t0 + timedelta(seconds=e["s"]),
        ...                        window=timedelta(seconds=10), fields=["x"],
        ...                        aggregates=["mean"]),
        ...     events, key=lambda e: e["id"])
        >>> [e["x_mean_10s"] for _, e in out.oks]
        [1.0, 2.0]
        >>> [(kind, e["s"]) for kind, (_, e) in out.rejected()]
        [('NotANumber', 6), ('Late', 1)]
    """
    flow = Dataflow("run_operator")
    up: Stream[Any] = op.input("in", flow, TestingSource(list(items), batch_size))
    if key is not None:
        up = op.key_on("key", up, key)
    captured = capture(_streams(build(up)))
    run_main(flow)
    out = Outputs(
        oks=captured.pop("oks", []),
        errs=captured.pop("errs", []),
        late=captured.pop("late", []),
    )
    out.other = captured
    return out
