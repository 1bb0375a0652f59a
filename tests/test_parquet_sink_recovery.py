"""parquet_sink under a crash: a flow SIGKILLed mid-way and resumed from Bytewax's recovery store.

The flow runs in its own process (this file run as a script), paced so the
kill lands while files are being staged and committed. While it is dead,
every visible file is whole and holds no row twice; after the resume, the
files hold every row exactly once and nothing is left staged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

N = 2000
BATCH = 30
PACE_S = 0.03
"""Seconds per batch: 67 batches make the flow last 2 s at least, so the kill lands mid-way."""


def _flow_main(out: str, recovery: str) -> None:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.recovery import RecoveryConfig
    from bytewax.testing import TestingSource, run_main

    from streamml.objectstore import parquet_sink

    def pace(rows: list[dict]) -> list[dict]:
        time.sleep(PACE_S)
        return rows

    flow = Dataflow("parquet_crash")
    rows = op.input(
        "in",
        flow,
        # 20 rows a minute apart per hour-directory change: files in several directories.
        TestingSource([{"id": i, "ts": i * 180_000} for i in range(N)], BATCH),
    )
    paced = op.flat_map_batch("pace", rows, pace)
    parquet_sink("pq", paced, path=out, time="ts", roll_bytes=4000)
    run_main(
        flow,
        epoch_interval=timedelta(milliseconds=100),
        recovery_config=RecoveryConfig(recovery, backup_interval=timedelta(0)),
    )


def _start(out: Path, recovery: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, str(out), str(recovery)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )


def _visible(out: Path) -> list[Path]:
    return [p for p in out.rglob("*.parquet") if "_staging" not in p.parts]


def _ids(files: list[Path]) -> list[int]:
    return sorted(i for f in files for i in pl.read_parquet(f)["id"].to_list())


@pytest.mark.reliability
def test_sigkill_mid_way_then_resume_gives_every_row_exactly_once(tmp_path: Path) -> None:
    from bytewax.recovery import init_db_dir

    out, recovery = tmp_path / "out", tmp_path / "recovery"
    out.mkdir()
    recovery.mkdir()
    init_db_dir(recovery, 1)

    first = _start(out, recovery)
    deadline = time.monotonic() + 120
    while len(_visible(out)) < 3:
        assert first.poll() is None, "the flow ended before it was killed"
        assert time.monotonic() < deadline, "no file committed in 120 s"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    assert first.wait(30) == -signal.SIGKILL

    seen = _ids(_visible(out))  # every visible file reads whole
    assert len(seen) == len(set(seen))
    assert 0 < len(seen) < N

    second = _start(out, recovery)
    assert second.wait(120) == 0
    assert _ids(_visible(out)) == list(range(N))
    assert not list((out / "_staging").iterdir())


if __name__ == "__main__":
    _flow_main(sys.argv[1], sys.argv[2])
