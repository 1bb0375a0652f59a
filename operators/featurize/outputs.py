"""The stream bundles featurization operators return."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream

from streamml.errors import Rejected

__all__ = ["FeaturesOut", "TimedFeaturesOut", "split_chunks"]


@dataclass(frozen=True)
class FeaturesOut:
    """Streams of a featurization step that can reject input.

    Attributes:
        oks: Items with their features.
        errs: :class:`~streamml.errors.Rejected` items that could not be featurized.
    """

    oks: Stream[Any]
    errs: Stream[Rejected]


@dataclass(frozen=True)
class TimedFeaturesOut:
    """Streams of an event-time featurization step.

    Attributes:
        oks: Items with their features.
        errs: :class:`~streamml.errors.Rejected` items that could not be featurized.
        late: :class:`~streamml.errors.Rejected` items (``error_type="Late"``)
            that arrived after their watermark; they changed no result.
    """

    oks: Stream[Any]
    errs: Stream[Rejected]
    late: Stream[Rejected]


def split_chunks(chunks: Stream[tuple[str, tuple[list, list, list]]]) -> TimedFeaturesOut:
    """Unpack a keyed stream of ``(oks, errs, lates)`` list triples into three flat streams.

    Call it inside an operator; its steps are named ``oks``, ``errs`` and ``late``.

    Examples:
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> flow = Dataflow("split_doc")
        >>> chunks = op.input("in", flow, TestingSource([("shard", ([1, 2], ["e"], []))]))
        >>> out = split_chunks(chunks)
        >>> oks, errs = [], []
        >>> op.output("o", out.oks, TestingSink(oks))
        >>> op.output("e", out.errs, TestingSink(errs))
        >>> run_main(flow)
        >>> oks, errs
        ([1, 2], ['e'])
    """

    def pick(i: int):
        def flatten(batch: list[tuple[str, tuple[list, list, list]]]) -> list[Any]:
            if len(batch) == 1:
                return batch[0][1][i]
            return [x for _, triple in batch for x in triple[i]]

        return flatten

    return TimedFeaturesOut(
        op.flat_map_batch("oks", chunks, pick(0)),
        op.flat_map_batch("errs", chunks, pick(1)),
        op.flat_map_batch("late", chunks, pick(2)),
    )
