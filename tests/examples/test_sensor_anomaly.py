"""`make demo`'s job with a small N: exits 0, its counts add up, and it finds the injected anomalies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_end_to_end_and_accounts_for_every_message(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.sensor_anomaly",
            "--events",
            "12000",
            "--sensors",
            "6",
            "--corrupt",
            "12",
            "--quiet",
            "--out",
            str(tmp_path),
            "--model-dir",
            str(tmp_path / "model"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "summary" in proc.stdout and "events/s" in proc.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["events_in"] == 12012
    assert summary["scored"] + summary["dead_lettered"] == summary["events_in"]
    assert summary["dead_lettered"] == 12  # two of each corruption kind, none of the good ones
    assert summary["dead_letter_reasons"] == {
        "DecodeError": 6,
        "InvalidReading": 4,
        "UnknownSchema": 2,
    }

    assert summary["injected_anomalies"] >= 5
    zscore = summary["detectors"]["zscore"]
    assert zscore["recall"] >= 0.7 and zscore["precision"] >= 0.7, zscore
    forest = summary["detectors"]["isoforest"]
    assert forest["recall"] >= 0.4 and forest["precision"] >= 0.4, forest

    windows = [json.loads(line) for line in (tmp_path / "windows.jsonl").read_text().splitlines()]
    assert len(windows) == zscore["found"] + forest["found"]
    assert all(w["start"] <= w["peak_time"] <= w["end"] for w in windows)
    assert (tmp_path / "sensor.png").stat().st_size > 10_000


def test_help_explains_itself() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "examples.sensor_anomaly", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert "--brokers" in proc.stdout and "--events" in proc.stdout
