"""Today's streamml resumes recovery stores written by the previous release.

The stores under ``tests/fixtures/previous_version/`` were written by the
streamml of commit 2a3c84e, the last before versioned snapshots, by crashing
the flows of ``flows.py`` half-way (see ``make_stores.py``). Resuming each
with today's code must finish the job: what the old code emitted before the
crash plus what today's emits after it equals an uninterrupted run of today's.
"""

from __future__ import annotations

import importlib.util
import math
import pickle
import shutil
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bytewax.recovery import RecoveryConfig
from bytewax.testing import run_main

FIXTURES = Path(__file__).parent / "fixtures" / "previous_version"
_spec = importlib.util.spec_from_file_location("previous_version_flows", FIXTURES / "flows.py")
flows = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(flows)


def _canonical(value: Any) -> Any:
    """A comparable form: floats to 9 significant digits, mappings as sorted pairs."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else float(f"{value:.9g}")
    if isinstance(value, dict):
        return tuple(sorted((k, _canonical(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_canonical(v) for v in value)
    return value


def _outputs(sinks: dict[str, list]) -> dict[str, Counter]:
    return {name: Counter(map(repr, map(_canonical, out))) for name, out in sinks.items()}


@pytest.mark.parametrize("family", sorted(flows.FLOWS))
def test_resumes_a_store_of_the_previous_release(family: str, tmp_path: Path) -> None:
    make, build, _ = flows.FLOWS[family]
    store = tmp_path / "store"
    shutil.copytree(FIXTURES / family, store)
    before = pickle.loads((store / "before.pickle").read_bytes())

    after: dict[str, list] = {}
    interval = timedelta(milliseconds=50) if family == "infer" else timedelta(0)
    run_main(
        build(flows.crashing(family, resumed=True), after),
        epoch_interval=interval,
        recovery_config=RecoveryConfig(str(store)),
    )
    whole: dict[str, list] = {}
    run_main(build(make(), whole))

    assert any(whole.values())
    if family == "anomaly":  # a window's record is re-emitted as it grows: the last one counts
        for name in whole:
            merged = {r["window_id"]: r for _, r in before[name] + after[name]}
            assert merged == {r["window_id"]: r for _, r in whole[name]}, name
        return
    combined = {name: before.get(name, []) + after.get(name, []) for name in whole}
    assert _outputs(combined) == _outputs(whole)
