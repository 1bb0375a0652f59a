"""Run every benchmark family and write the results: ``python -m benchmarks [--quick] [FAMILY ...]``.

Each family is a module ``benchmarks/<family>.py`` with ``main(quick) -> dict``.
Results go to ``benchmarks/results/<date>-<host>.json`` with the machine's
description, so runs on different days and machines can be compared, and
``docs/benchmarks/README.md`` is generated from them. A quick run writes
``<date>-<host>-quick.json``, so it never replaces a full run's results. A run
of named families writes ``<date>-<host>-<family>+<family>.json`` and leaves the
report alone: it documents a run of every family, which a partial run must not
overwrite.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import socket
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import benchmarks
from benchmarks.harness import machine_info
from benchmarks.report import write_report

RESULTS = Path(__file__).with_name("results")
_NOT_FAMILIES = {"harness", "report", "__main__"}
_QUICK_IN_SUITE = {"soak": "python -m benchmarks.soak"}
"""Families whose full size is too long for the suite (the 10M-event soak takes ~30 min
here): the suite runs them quick and says how to run them in full."""


def families() -> list[str]:
    """Names of the benchmark family modules, sorted."""
    return sorted(
        info.name
        for info in pkgutil.iter_modules(benchmarks.__path__)
        if info.name not in _NOT_FAMILIES and not info.name.startswith("_")
    )


def main(argv: list[str] | None = None) -> int:
    available = families()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "Run streamml's benchmarks. Each subject runs next to its baseline in the "
            "same process, alternating rounds; medians and ratios are the result."
        ),
    )
    parser.add_argument(
        "names", nargs="*", metavar="FAMILY", help=f"families to run (default: all of {available})"
    )
    parser.add_argument("--quick", action="store_true", help="smaller inputs and fewer rounds")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(available))
    if unknown:
        parser.error(f"unknown benchmark families {unknown}; available: {available}")
    chosen = args.names or available

    report: dict = {
        "started": datetime.now(timezone.utc).isoformat(),
        "quick": args.quick,
        "machine": machine_info(),
        "families": {},
        "seconds": {},
    }
    suite_start = time.perf_counter()
    failed = []
    for i, name in enumerate(chosen, 1):
        print(f"\n[{i}/{len(chosen)}] {name}", flush=True)
        start = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            quick = args.quick or name in _QUICK_IN_SUITE
            if quick and not args.quick:
                print(f"(quick size in the suite; full run: {_QUICK_IN_SUITE[name]})", flush=True)
            report["families"][name] = module.main(quick=quick)
        except Exception:  # noqa: BLE001 - one broken family must not hide the others
            traceback.print_exc()
            failed.append(name)
            report["families"][name] = {"error": traceback.format_exc()}
        report["seconds"][name] = round(time.perf_counter() - start, 1)
        print(f"[{i}/{len(chosen)}] {name} done in {report['seconds'][name]:.0f} s", flush=True)
    report["seconds"]["total"] = round(time.perf_counter() - suite_start, 1)

    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    partial = "-" + "+".join(chosen) if set(chosen) != set(available) else ""
    size = "-quick" if args.quick else ""
    path = RESULTS / f"{stamp}-{socket.gethostname()}{partial}{size}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nresults written to {path}")
    if partial:
        print(
            f"report left alone (it documents a run of every family); from this run alone:"
            f" python -m benchmarks.report {path}"
        )
    else:
        print(f"report written to {write_report(report, path)}")
    if failed:
        print(f"FAILED families: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
