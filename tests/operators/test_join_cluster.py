"""A 2-process Bytewax cluster gives the joins' results of one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.reliability

FLOW = textwrap.dedent(
    """
    from datetime import datetime, timedelta, timezone
    from pathlib import Path

    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import TestingSource

    from streamml.operators.join import interval_join, label_join

    T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


    class _Lines(StatelessSinkPartition):
        def __init__(self, path):
            self._path = path

        def write_batch(self, items):
            with open(self._path, "a") as f:
                f.writelines(repr(item) + "\\n" for item in items)


    class Lines(DynamicSink):
        def __init__(self, out_dir, name):
            self._out_dir, self._name = out_dir, name

        def build(self, step_id, worker_index, worker_count):
            return _Lines(Path(self._out_dir) / f"{self._name}-{worker_index}.txt")


    def ts(e):
        return e["ts"]


    def get_flow(out_dir):
        preds = [
            (f"e{i}", {"prediction": i % 3 % 2, "model_version": f"v{i % 2}",
                       "ts": T0 + timedelta(seconds=i / 4)})
            for i in range(600)
        ]
        labels = [(f"e{i}", {"label": (i // 3) % 2, "ts": T0 + timedelta(seconds=i / 4 + i % 7)})
                  for i in range(0, 600, 2)]
        flow = Dataflow("cluster")
        p = op.input("preds", flow, TestingSource(preds, batch_size=16))
        lb = op.input("labels", flow, TestingSource(labels, batch_size=16))
        lj = label_join("lj", p, lb, ts=ts, max_delay=timedelta(seconds=5),
                        window=timedelta(seconds=20), lateness=timedelta(seconds=200), shards=6)
        ij = interval_join(
            "ij",
            op.key_on("kp", op.key_rm("rp", p), lambda e: e["model_version"]),
            op.key_on("kl", op.key_rm("rl", lb), lambda e: "v%d" % e["label"]),
            left_ts=ts, lower=timedelta(seconds=-1), upper=timedelta(seconds=1),
            lateness=timedelta(seconds=200), how="left", shards=6,
        )
        for name, stream in [("labelled", lj.labelled), ("metrics", lj.metrics), ("pairs", ij.oks)]:
            op.output(name, stream, Lines(out_dir, name))
        return flow
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp: Path, out: Path, processes: int) -> dict[str, list[str]]:
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{tmp}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    target = f"joinflow:get_flow({str(out)!r})"
    addresses = ";".join(f"127.0.0.1:{_free_port()}" for _ in range(processes))
    cmds = [
        [sys.executable, "-m", "bytewax.run", target]
        + ([] if processes == 1 else ["-i", str(i), "-a", addresses])
        for i in range(processes)
    ]
    procs = [subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE) for cmd in cmds]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
    results: dict[str, list[str]] = {}
    for name in ("labelled", "metrics", "pairs"):
        lines = [ln for f in out.glob(f"{name}-*.txt") for ln in f.read_text().splitlines()]
        results[name] = sorted(lines)
    return results


def test_two_processes_equal_one(tmp_path: Path):
    (tmp_path / "joinflow.py").write_text(FLOW)
    one = _run(tmp_path, tmp_path / "one", 1)
    two = _run(tmp_path, tmp_path / "two", 2)
    for name in one:
        assert one[name], f"{name} is empty: the comparison would prove nothing"
        assert one[name] == two[name], name
    assert len(one["metrics"]) == 8 * 2  # 150 s of predictions in 20 s windows, two versions
