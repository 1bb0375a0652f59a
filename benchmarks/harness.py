"""Alternating A/B measurement: the machine is shared and noisy, so ratios are the result.

Each benchmark runs its subject and its comparisons in the same process,
alternating (A B A B ...), and reports the median, min and max of each, and
the ratio of medians to the first one.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from streamml.tuning import relaxed_gc

__all__ = [
    "CountSink",
    "Measurement",
    "alternate",
    "format_table",
    "machine_info",
    "per_cpu_second",
    "with_cpu_rates",
]


@dataclass(frozen=True)
class Measurement:
    """Throughputs of one contender over the rounds, in items per second."""

    name: str
    items: int
    rates: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(median=self.median, min=min(self.rates), max=max(self.rates))
        return d


def alternate(
    contenders: Mapping[str, Callable[[], int]],
    *,
    rounds: int = 3,
    warmup: bool = True,
) -> list[Measurement]:
    """Run each contender ``rounds`` times, interleaved, and time each run.

    Each contender is a zero-argument callable that does the whole job and
    returns the number of items it processed; its rate is items per second
    of wall time. Every run, baselines included, runs under
    :func:`streamml.tuning.relaxed_gc`, as the examples do, so no contender
    gains or loses by the collector's settings.

    Examples:
        >>> results = alternate({"sum": lambda: len([sum(range(100))]) * 100}, rounds=3)
        >>> [m.name for m in results], len(results[0].rates)
        (['sum'], 3)
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1; got {rounds}")
    if warmup:
        for run in contenders.values():
            with relaxed_gc():
                run()
    results = {name: Measurement(name, 0) for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            with relaxed_gc():
                start = time.perf_counter()
                items = run()
                elapsed = time.perf_counter() - start
            results[name] = Measurement(name, items, results[name].rates + [items / elapsed])
    return list(results.values())


def with_cpu_rates(
    contenders: Mapping[str, Callable[[], int]],
) -> tuple[dict[str, Callable[[], int]], dict[str, list[float]]]:
    """The contenders, each also recording its items per CPU-second of this process.

    On a shared machine, CPU time is what other load disturbs least; it counts
    every thread of the process (a multi-threaded library pays for all of them).
    Returns the wrapped contenders for :func:`alternate` and the dict their
    rates go to (warm-up runs included; :func:`per_cpu_second` keeps the rounds).

    Examples:
        >>> runs, rates = with_cpu_rates({"sum": lambda: len([sum(range(10**5))])})
        >>> runs["sum"](), len(rates["sum"])
        (1, 1)
    """
    rates: dict[str, list[float]] = {name: [] for name in contenders}

    def timed(name: str, run: Callable[[], int]) -> Callable[[], int]:
        def go() -> int:
            cpu = time.process_time()
            items = run()
            rates[name].append(items / max(time.process_time() - cpu, 1e-9))
            return items

        return go

    return {name: timed(name, run) for name, run in contenders.items()}, rates


def per_cpu_second(
    results: list[Measurement], rates: Mapping[str, list[float]]
) -> list[Measurement]:
    """The measurements of :func:`alternate` again, as items per CPU-second of the same rounds.

    Examples:
        >>> runs, rates = with_cpu_rates({"sum": lambda: len([sum(range(10**5))])})
        >>> [len(m.rates) for m in per_cpu_second(alternate(runs, rounds=2), rates)]
        [2]
    """
    return [Measurement(m.name, m.items, rates[m.name][-len(m.rates) :]) for m in results]


def format_table(title: str, measurements: list[Measurement], unit: str = "items/s") -> str:
    """A plain-text table: median, min–max, and the ratio of each median to the first row's."""
    base = measurements[0].median
    lines = [title, f"  {'contender':<40} {'median ' + unit:>18} {'min–max':>25} {'ratio':>7}"]
    for m in measurements:
        lines.append(
            f"  {m.name:<40} {m.median:>18,.0f} {min(m.rates):>12,.0f}–{max(m.rates):<12,.0f}"
            f" {m.median / base:>6.2f}x"
        )
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    """CPU model, cores, Python and library versions, for the results file."""
    import os
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    libs = {}
    for lib in ("bytewax", "onnxruntime", "numpy", "fastavro", "confluent-kafka", "orjson"):
        try:
            libs[lib] = version(lib)
        except PackageNotFoundError:
            libs[lib] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": libs,
    }


class _CountPartition(StatelessSinkPartition[Any]):
    def __init__(self, counter: list[int]) -> None:
        self._counter = counter

    def write_batch(self, items: list[Any]) -> None:
        if pl.DataFrame not in set(map(type, items)):  # C speed: a join emits millions of pairs
            self._counter[0] += len(items)
        else:
            self._counter[0] += sum(len(x) if isinstance(x, pl.DataFrame) else 1 for x in items)


class CountSink(DynamicSink[Any]):
    """Counts what reaches it and keeps nothing, so the dataflow, not the sink, is measured.

    ``counter[0]`` is the count (shared by the workers of one process): the rows of
    a frame, one for any other item.
    """

    def __init__(self) -> None:
        self.counter = [0]

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CountPartition:
        return _CountPartition(self.counter)
